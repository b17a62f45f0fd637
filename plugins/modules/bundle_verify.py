#!/usr/bin/python
"""Ansible module: verifies an unpacked bundle against its manifest.json and fails naming every tampered file or image."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: bundle_verify
short_description: Verify an unpacked airgap.kubernetes bundle against its manifest
description:
  - Checks the sha256 of every file listed in the bundle's C(manifest.json), and every blob of every image
    listed there in the bundle's registry storage (manifests, configs, layers).
  - Fails when a listed file or image blob is modified or missing, or when a file outside the registry
    storage is not in the manifest. The message names each one, and the fix.
  - Never changes anything; safe in check mode.
  - The format is described in the collection's C(docs/bundle-format.md).
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  path:
    description: The unpacked bundle directory, the one holding C(manifest.json).
    type: path
    required: true
notes:
  - Runs on the host that holds the bundle. Hashing reads the whole bundle once.
"""

EXAMPLES = r"""
- name: Verify the bundle before serving it
  airgap.kubernetes.bundle_verify:
    path: /srv/airgap/bundle
  register: bundle_server_bundle

- name: Show the images it holds
  ansible.builtin.debug:
    var: bundle_server_bundle.images
"""

RETURN = r"""
problems:
  description: One line per file or image that does not match the manifest (empty on success).
  returned: always
  type: list
  elements: str
  sample: ["files/github.com/etcd-io/etcd/releases/download/v3.4.23/etcd: is modified (sha256 differs ...)"]
created:
  description: When the bundle was built (UTC, ISO 8601).
  returned: success
  type: str
arches:
  description: The architectures the bundle was built for.
  returned: success
  type: list
  elements: str
apt:
  description: The bundle's apt repository, C(key) (bundle-relative path of the signing key) and C(suites).
  returned: success
  type: dict
  sample: {"key": "keys/bundle-apt.asc", "suites": ["bookworm"]}
files_count:
  description: How many files the manifest lists (outside registry storage).
  returned: success
  type: int
images:
  description: Each image's upstream reference and its digest in the registry storage.
  returned: success
  type: dict
  sample: {"registry.k8s.io/pause:3.10.2": "sha256:b70e142a..."}
repositories:
  description: The registry repositories the images live in (the upstream repository path).
  returned: success
  type: list
  elements: str
sample_file:
  description: The smallest mirrored file (C(path), C(sha256)), for a quick end-to-end download check.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.kubernetes.plugins.module_utils.bundle import FIX, BundleError, summary, verify_bundle


def main() -> None:
    module = AnsibleModule(argument_spec={"path": {"type": "path", "required": True}}, supports_check_mode=True)
    path = module.params["path"]
    try:
        problems = [str(p) for p in verify_bundle(path)]
        if problems:
            module.fail_json(
                msg=f"bundle {path} does not match its manifest, {len(problems)} problem(s):\n  "
                + "\n  ".join(problems) + f"\nNothing was installed or served from it. Fix: {FIX}.",
                problems=problems,
            )
        module.exit_json(changed=False, problems=[], **summary(path))
    except BundleError as e:
        module.fail_json(msg=str(e), problems=[str(e)])


if __name__ == "__main__":
    main()
