#!/usr/bin/python
"""Ansible module: this host's keys and signing requests for a set of certificates, and the certificates it has."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: x509_requests
short_description: Make the keys and signing requests of several certificates in one run, and read the current ones
description:
  - For each certificate, keeps or creates C(<dir>/<name>.key) (ECDSA P-256, mode 0600; it never leaves the host),
    keeps C(<dir>/<name>.csr) while it matches the key, subject, names and usages asked (else writes a new one), and
    reads C(<dir>/<name>.crt) when it exists.
  - Returns each request with the current certificate, for M(airgap.kubernetes.x509_sign) on the CA host; the
    certificates are then written with M(airgap.kubernetes.config_files).
  - One module run replaces a key task, a request task and a read per certificate.
  - Needs python3-cryptography on the host. Supports check mode.
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  certs:
    description: The certificates; other keys of each item (such as C(restart)) come back unchanged in RV(requests).
    type: list
    elements: dict
    required: true
    suboptions:
      name: {description: "File name stem: <dir>/<name>.key, .csr and .crt.", type: str, required: true}
      dir: {description: The directory; created (0755) when missing., type: path, required: true}
      common_name: {description: The subject's CN., type: str, required: true}
      organization: {description: The subject's O., type: str}
      sans: {description: "Subject alternative names, DNS:NAME or IP:ADDRESS.", type: list, elements: str, default: []}
      usages: {description: Extended key usages (serverAuth, clientAuth)., type: list, elements: str, required: true}
      owner: {description: The key's owner., type: str, default: root}
      group: {description: The key's group; defaults to the owner., type: str}
"""

EXAMPLES = r"""
- name: Create the keys and signing requests, and read the current certificates
  airgap.kubernetes.x509_requests:
    certs:
      - {name: admin, dir: /etc/etcd/pki, common_name: etcd-admin, usages: [clientAuth]}
  register: requests
"""

RETURN = r"""
requests:
  description: One per certificate, in order; C(path) (the .crt), C(csr) (PEM), C(current) (the .crt's PEM or "") and
    the item's own keys.
  returned: always
  type: list
  elements: dict
"""

import os

from ansible_collections.airgap.kubernetes.plugins.module_utils.ownership import ids

SPEC_KEYS = {"name", "dir", "common_name", "organization", "sans", "usages", "owner", "group"}


def _write(path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def prepare(spec: dict, check: bool, pki) -> tuple[dict, list[str]]:
    """(request, changed paths) for one certificate."""
    base = os.path.join(spec["dir"], spec["name"])
    key_path, csr_path, crt_path = f"{base}.key", f"{base}.csr", f"{base}.crt"
    owner = spec.get("owner") or "root"
    uid, gid = ids(owner, spec.get("group") or owner)
    changed = []
    if not os.path.isdir(spec["dir"]):
        changed.append(spec["dir"])
        if not check:
            os.makedirs(spec["dir"], mode=0o755, exist_ok=True)
    if os.path.isfile(key_path):
        with open(key_path, "rb") as fh:
            key = pki.load_key(fh.read())
        st = os.stat(key_path)
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (0o600, uid, gid):
            changed.append(key_path)
            if not check:
                os.chown(key_path, uid, gid)
                os.chmod(key_path, 0o600)
    else:
        pem = pki.new_key_pem()
        key = pki.load_key(pem)
        changed.append(key_path)
        if not check:
            _write(key_path, pem, 0o600, uid, gid)
    csr = None
    if os.path.isfile(csr_path):
        with open(csr_path, "rb") as fh:
            try:
                csr = pki.x509.load_pem_x509_csr(fh.read())
            except ValueError:
                csr = None
        if csr is not None and not pki.csr_matches(csr, key, spec):
            csr = None
    if csr is None:
        csr = pki.build_csr(key, spec)
        changed.append(csr_path)
        if not check:
            _write(csr_path, csr.public_bytes(pki.serialization.Encoding.PEM), 0o644, 0, 0)
    current = ""
    if os.path.isfile(crt_path):
        with open(crt_path, encoding="utf-8") as fh:
            current = fh.read()
    request = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    request.update(name=spec["name"], dir=spec["dir"], path=crt_path, current=current,
                   csr=csr.public_bytes(pki.serialization.Encoding.PEM).decode())
    return request, changed


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec={"certs": {"type": "list", "elements": "dict", "required": True}},
                           supports_check_mode=True)
    try:
        from ansible_collections.airgap.kubernetes.plugins.module_utils import x509_pki as pki
    except ImportError as exc:
        module.fail_json(msg=f"python3-cryptography is missing on this host ({exc}): install it from the bundle")
    requests, changed = [], []
    try:
        for spec in module.params["certs"]:
            missing = sorted({"name", "dir", "common_name", "usages"} - set(spec))
            if missing:
                raise ValueError(f"certificate {spec.get('name', '?')}: {', '.join(missing)} missing")
            request, paths = prepare(spec, module.check_mode, pki)
            requests.append(request)
            changed += paths
    except (OSError, ValueError, KeyError) as exc:
        module.fail_json(msg=f"{type(exc).__name__}: {exc}")
    module.exit_json(changed=bool(changed), changed_files=changed, requests=requests)


if __name__ == "__main__":
    main()
