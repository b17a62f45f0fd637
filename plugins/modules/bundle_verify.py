#!/usr/bin/python
"""Ansible module: checks an unpacked bundle's signature, then every file and image against its manifest.json; or only
the signature, straight from the bundle's tarball, before it is unpacked."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: bundle_verify
short_description: Verify an unpacked airgap.kubernetes bundle against its manifest
description:
  - First checks where the bundle's trust comes from. With O(trusted_keys), C(manifest.json.asc) must be a valid
    signature of C(manifest.json) by one of those keys, checked with C(gpgv) against a keyring holding only them
    (never the host's keyring). Without, O(checksum_verified) must say that the tarball matched an sha256 the
    operator gave out of band. Either way the bundle vouches for nothing about itself.
  - Then refuses a bundle older than the one in O(deployed) unless O(allow_downgrade).
  - Then checks the sha256 of every file listed in the bundle's C(manifest.json), and every blob of every image
    listed there in the bundle's registry storage (manifests, configs, layers).
  - Fails when a listed file or image blob is modified or missing, or when a file outside the registry
    storage is not in the manifest. The message names each one, and the fix.
  - With O(archive) instead of O(path), checks only the signature, before anything is unpacked. C(manifest.json),
    C(manifest.json.asc) and C(keys/release.asc) are copied out of the tarball into a private scratch directory
    (mode 0700, removed after) and checked there. build-bundle packs them first, so only the head of the tarball is
    read; a tarball packed otherwise is read through to find them, never unpacked and never let through unchecked.
    The full check of the unpacked tree (with O(path)) still follows, since the tarball could hold a second copy of
    a name.
  - Never changes anything; safe in check mode.
  - The format is described in the collection's C(docs/bundle-format.md).
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  path:
    description: The unpacked bundle directory, the one holding C(manifest.json). Exactly one of O(path) and O(archive).
    type: path
  archive:
    description:
      - A bundle tarball (C(bundle.tar.gz)) whose signature to check without unpacking it. With no O(trusted_keys),
        only O(checksum_verified) is checked (the tarball's sha256 is what vouches for it then).
    type: path
  controller:
    description:
      - With O(archive), the module runs on the Ansible controller before the tarball is copied to the bundle host.
        Where the controller cannot check (neither C(gpgv) nor C(sqv) installed, the tarball not at that path, or a
        pinned key file not there), it returns C(checked=false) and the reason instead of failing; the bundle host
        checks it in any case. A refusal there says that nothing was copied.
    type: bool
    default: false
  trusted_keys:
    description:
      - The pinned release keys (C(bundle_trusted_keys)). Each entry is a 40-hex fingerprint (the key itself is then
        taken from the bundle's C(keys/release.asc), and used only when its fingerprint matches), an armored public
        key, or the absolute path of a public key file on the host that runs the module.
    type: list
    elements: str
    default: []
  checksum_verified:
    description:
      - The tarball this tree came from matched the sha256 the operator gave (C(bundle_sha256)). Required when
        O(trusted_keys) is empty; a C(.sha256) file that travelled with the tarball does not count.
    type: bool
    default: false
  deployed:
    description: The directory of the bundle served now; when it holds a readable C(manifest.json), an older bundle is refused.
    type: path
  allow_downgrade:
    description: Serve a bundle older than O(deployed) all the same.
    type: bool
    default: false
notes:
  - Runs on the host that holds the bundle. Hashing reads the whole bundle once.
  - With O(archive), a refusal (unsigned while a key is pinned, signed by a key that is not pinned, the manifest
    changed after signing) names the tarball, the problem and the fix.
"""

EXAMPLES = r"""
- name: Verify the bundle before serving it
  airgap.kubernetes.bundle_verify:
    path: /srv/airgap/bundle
    trusted_keys: ["0A1B2C3D4E5F60718293A4B5C6D7E8F901234567"]
  register: bundle_server_bundle

- name: Check the tarball's signature before unpacking it
  airgap.kubernetes.bundle_verify:
    archive: /srv/airgap/bundle.tar.gz
    trusted_keys: ["0A1B2C3D4E5F60718293A4B5C6D7E8F901234567"]

- name: Show the images it holds
  ansible.builtin.debug:
    var: bundle_server_bundle.images
"""

RETURN = r"""
checked:
  description: With O(archive), whether the signature was checked here (false on a controller that cannot, or when
    no key is pinned and the sha256 vouches for the tarball).
  returned: with archive
  type: bool
reason:
  description: Why the signature was not checked here (with O(controller)).
  returned: when checked is false
  type: str
members_first:
  description: With O(archive), whether the tarball holds the signature's files first, so that only its head was read.
  returned: when checked
  type: bool
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
serial:
  description: The bundle's place in its site's order of builds (the downgrade check compares it).
  returned: success
  type: int
signer:
  description: Primary fingerprint of the pinned key whose signature was checked; null when trust came from the sha256.
  returned: success
  type: str
signed_by:
  description: The fingerprint the manifest itself records as its signer (for people; the signature is what counts).
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

import os
import shutil

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.kubernetes.plugins.module_utils.bundle import (FIX, BundleError, downgrade_from, summary,
                                                                             verify_bundle)
from ansible_collections.airgap.kubernetes.plugins.module_utils.bundle_trust import (establish_trust,
                                                                                   verify_archive_signature)

NOTHING_DONE = "Nothing was installed or served from it."


def _cannot_check_here(archive: str, trusted_keys: list) -> str:
    """Why the controller cannot check the tarball's signature, or "" when it can."""
    if not (shutil.which("gpgv") or shutil.which("sqv")):
        return "neither gpgv nor sqv is installed on the controller"
    if not os.path.isfile(archive):
        return f"{archive} is not a file on the controller"
    missing = [k for k in trusted_keys if str(k).strip().startswith("/") and not os.path.isfile(str(k).strip())]
    if missing:
        return f"the pinned key file {missing[0]} is not on the controller"
    return ""


def check_archive(module: AnsibleModule) -> None:
    """The archive mode: the tarball's signature, before anything of it is copied or unpacked."""
    params = module.params
    archive, keys = params["archive"], params["trusted_keys"]
    done = ("Nothing was changed: the tarball was not copied to the bundle host." if params["controller"]
            else "Nothing was changed: the tarball was not unpacked.")
    try:
        if not keys:
            establish_trust(archive, keys, params["checksum_verified"])
            module.exit_json(changed=False, checked=False,
                             reason="no key is pinned: the tarball's sha256 vouches for it")
        reason = _cannot_check_here(archive, keys) if params["controller"] else ""
        if reason:
            module.exit_json(changed=False, checked=False, reason=f"{reason}: the bundle host checks the signature")
        signer, first = verify_archive_signature(archive, keys)
        module.exit_json(changed=False, checked=True, signer=signer, members_first=first, problems=[])
    except BundleError as e:
        module.fail_json(msg=f"{e}. {done}", problems=[str(e)])


def main() -> None:
    module = AnsibleModule(argument_spec={
        "path": {"type": "path"},
        "archive": {"type": "path"},
        "controller": {"type": "bool", "default": False},
        "trusted_keys": {"type": "list", "elements": "str", "default": [], "no_log": False},
        "checksum_verified": {"type": "bool", "default": False},
        "deployed": {"type": "path"},
        "allow_downgrade": {"type": "bool", "default": False},
    }, required_one_of=[("path", "archive")], mutually_exclusive=[("path", "archive")], supports_check_mode=True)
    if module.params["archive"]:
        check_archive(module)
    path, params = module.params["path"], module.params
    try:
        # Trust first: nothing in the bundle is taken as true before something outside it vouches for it.
        signer = establish_trust(path, params["trusted_keys"], params["checksum_verified"])
        older = None if params["allow_downgrade"] else downgrade_from(path, params["deployed"])
        if older:
            module.fail_json(msg=f"bundle {path}: {older}. {NOTHING_DONE}", problems=[older])
        problems = [str(p) for p in verify_bundle(path)]
        if problems:
            module.fail_json(
                msg=f"bundle {path} does not match its manifest, {len(problems)} problem(s):\n  "
                + "\n  ".join(problems) + f"\n{NOTHING_DONE} Fix: {FIX}.",
                problems=problems,
            )
        module.exit_json(changed=False, problems=[], signer=signer, **summary(path))
    except BundleError as e:
        module.fail_json(msg=f"{e}. {NOTHING_DONE}", problems=[str(e)])


if __name__ == "__main__":
    main()
