#!/usr/bin/python
"""Ansible module: fetches files from the bundle's file server, each checked against its catalog sha256."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: bundle_fetch
short_description: Fetch a role's files from the bundle's file server in one run, each checked against its sha256
description:
  - For each of O(files), a destination that already holds the wanted sha256 is kept (only its mode and owner are
    fixed), and nothing is fetched. Otherwise the file is fetched beside its destination, checked against the
    sha256, and renamed into place, so a running binary is replaced, never overwritten while it runs.
  - HTTPS is verified against O(ca_file) alone, not the system's trust store. Plain C(http://) and C(file://) need
    no CA file.
  - A connection error, a timeout or a 5xx answer is retried O(retries) times, O(delay) seconds apart. A wrong
    sha256 is not retried; the task fails at once, naming the URL and both checksums, and the destination is not
    touched.
  - One module run for all of a role's files: C(get_url) in a loop cost one run per file and host.
  - Supports check mode.
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  files:
    description: The files, each with C(url), C(dest), C(sha256) and optionally C(mode) (octal string, default
      C(0644)), C(owner) and C(group) (default C(root)).
    type: list
    elements: dict
    required: true
  ca_file: {description: The bundle CA (PEM) that HTTPS URLs are verified against., type: path}
  timeout: {description: Seconds per connection attempt and read., type: int, default: 30}
  retries: {description: How many times a failed fetch is tried again., type: int, default: 3}
  delay: {description: Seconds between tries., type: int, default: 3}
"""

EXAMPLES = r"""
- name: Download kubelet, kubeadm and kubectl
  airgap.kubernetes.bundle_fetch:
    ca_file: /etc/airgap-kubernetes/bundle-ca.crt
    files:
      - url: https://bundle.example:8443/files/kubernetes/v1.35.0/bin/linux/amd64/kubelet
        dest: /usr/local/bin/kubelet
        sha256: 0123...
        mode: "0755"
"""

RETURN = r"""
files:
  description: One entry per file, in the order given, with C(dest), C(url) and C(changed) (fetched, or mode or
    owner fixed).
  returned: always
  type: list
  elements: dict
"""

import http.client
import os
import re
import ssl
import time
import urllib.error
import urllib.request

from ansible_collections.airgap.kubernetes.plugins.module_utils.ownership import ids, sha256_file, write_beside


def opener(url: str, ca_file: str | None):
    """urlopen's context for URL: HTTPS verified against the bundle CA alone."""
    if not url.startswith("https://"):
        return None
    if not ca_file or not os.path.isfile(ca_file):
        raise ValueError(f"{url}: the bundle CA file {ca_file or '(none given)'} does not exist; layer 01 "
                         "(bootstrap_os) writes it: run it for this host first")
    return ssl.create_default_context(cafile=ca_file)


def fetch(url: str, dest: str, sha256: str, mode: int, uid: int, gid: int, ca_file: str | None,
          timeout: int) -> None:
    """Fetches URL beside DEST, checks its sha256, then renames it into place."""
    context = opener(url, ca_file)

    def verify(digest: str) -> None:
        if digest != sha256:
            raise ValueError(f"{url}: its sha256 is {digest}, the catalog's is {sha256}: the bundle server serves "
                             f"another file than the catalog names, so {dest} is left as it was. Serve the bundle "
                             "that was built for this catalog (layer 01), or fix the catalog's checksum")

    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        write_beside(dest, resp, mode, uid, gid, verify)


def fetch_with_retries(module, item: dict, mode: int, uid: int, gid: int) -> None:
    p, url = module.params, item["url"]
    for attempt in range(p["retries"] + 1):
        try:
            fetch(url, item["dest"], item["sha256"], mode, uid, gid, p["ca_file"], p["timeout"])
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise ValueError(f"{url}: the bundle server answers {exc.code} {exc.reason}: the bundle it serves "
                                 "lacks this file; serve the bundle built for this catalog (layer 01)") from None
            failure = f"{exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                raise ValueError(f"{url}: TLS verification against {p['ca_file']} failed ({exc.reason}): the "
                                 "server's certificate is not the bundle CA's; rerun layer 01 so both agree") from None
            failure = str(exc.reason)
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            failure = str(exc) or type(exc).__name__
        if attempt == p["retries"]:
            raise ValueError(f"{url}: {failure} (after {attempt + 1} tries): check that the bundle server runs "
                             "(layer 01) and that this host reaches it")
        time.sleep(p["delay"])


def converge(module, item: dict) -> bool:
    """Makes one file right; True when it changed (or would, in check mode)."""
    for key in ("url", "dest", "sha256"):
        if not item.get(key):
            raise ValueError(f"a file without {key}: {item}")
    if not re.fullmatch(r"[0-9a-f]{64}", str(item["sha256"])):
        raise ValueError(f"{item['url']}: sha256 {item['sha256']!r} is not 64 hex digits; fix it in the catalog")
    uid, gid = ids(str(item.get("owner", "root")), str(item.get("group", "root")))
    mode = int(str(item.get("mode", "0644")), 8)
    dest = item["dest"]
    if not os.path.isdir(os.path.dirname(dest)):
        raise ValueError(f"{os.path.dirname(dest)} is not a directory: create it first")
    if os.path.isfile(dest) and sha256_file(dest) == item["sha256"]:
        st = os.stat(dest)
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid):
            return False
        if not module.check_mode:
            os.chown(dest, uid, gid)
            os.chmod(dest, mode)
        return True
    if not module.check_mode:
        fetch_with_retries(module, item, mode, uid, gid)
    return True


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "required": True},
            "ca_file": {"type": "path"},
            "timeout": {"type": "int", "default": 30},
            "retries": {"type": "int", "default": 3},
            "delay": {"type": "int", "default": 3},
        },
        supports_check_mode=True,
    )
    results = []
    try:
        for item in module.params["files"]:
            results.append({"dest": item.get("dest"), "url": item.get("url"), "changed": converge(module, item)})
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc), files=results)
    module.exit_json(changed=any(r["changed"] for r in results), files=results)


if __name__ == "__main__":
    main()
