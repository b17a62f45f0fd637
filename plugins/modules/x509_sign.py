#!/usr/bin/python
"""Ansible module: on the CA host, signs the requests whose current certificate cannot stay, in one run."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: x509_sign
short_description: Sign several certificate requests with a CA on its own host, keeping current certificates
description:
  - Takes the requests of M(airgap.kubernetes.x509_requests) and returns a certificate for each. A current
    certificate stays when this CA signed it, it holds the request's key, subject, names and usages, and it expires
    after the renewal window; otherwise the request is signed in memory (nothing is written on the CA host).
  - The CA key is read on this host only and never returned.
  - Supports check mode (reports what would be signed, returns the current certificates).
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  ca_cert: {description: The CA certificate., type: path, required: true}
  ca_key: {description: The CA key., type: path, required: true}
  valid_days: {description: Lifetime of a new certificate, in days., type: int, required: true}
  renew_days: {description: A certificate that expires within this many days is signed again., type: int, required: true}
  requests:
    description: The requests (C(csr), C(current), C(path), and any keys that come back unchanged).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Sign the requests with the etcd CA [CA host]
  airgap.kubernetes.x509_sign:
    ca_cert: /etc/etcd/pki/ca.crt
    ca_key: /etc/etcd/pki/ca.key
    valid_days: 365
    renew_days: 30
    requests: "{{ requests.requests }}"
  delegate_to: etcd1
"""

RETURN = r"""
certificates:
  description: One per request, in order; C(certificate) (PEM), C(signed), C(reason), C(old_not_after) (ASN.1 time of
    the certificate it replaces, or ""), C(not_after), and the request's own keys but C(csr) and C(current).
  returned: always
  type: list
  elements: dict
"""

import datetime


def decide(requests: list[dict], ca, ca_key, valid_days: int, renew_days: int, check: bool, pki) -> list[dict]:
    now = datetime.datetime.now(datetime.timezone.utc)
    renew_before = now + datetime.timedelta(days=renew_days)
    out = []
    for req in requests:
        csr = pki.x509.load_pem_x509_csr(req["csr"].encode())
        current = pki.x509.load_pem_x509_certificate(req["current"].encode()) if req.get("current") else None
        reason = pki.keep_reason(current, csr, ca, renew_before) if current else "no certificate yet"
        result = {k: v for k, v in req.items() if k not in ("csr", "current")}
        result.update(signed=reason is not None, reason=reason or "",
                      old_not_after=pki.not_after_asn1(current) if current else "")
        if reason is None or check:
            cert = current
            result["certificate"] = req.get("current") or ""
        else:
            cert = pki.sign(csr, ca, ca_key, valid_days, now)
            result["certificate"] = cert.public_bytes(pki.serialization.Encoding.PEM).decode()
        result["not_after"] = pki.not_after_asn1(cert) if cert else ""
        out.append(result)
    return out


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={"ca_cert": {"type": "path", "required": True}, "ca_key": {"type": "path", "required": True},
                       "valid_days": {"type": "int", "required": True}, "renew_days": {"type": "int", "required": True},
                       "requests": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    p = module.params
    try:
        from ansible_collections.airgap.kubernetes.plugins.module_utils import x509_pki as pki
    except ImportError as exc:
        module.fail_json(msg=f"python3-cryptography is missing on the CA host ({exc}): install it from the bundle")
    try:
        with open(p["ca_cert"], "rb") as fh:
            ca = pki.x509.load_pem_x509_certificate(fh.read())
        with open(p["ca_key"], "rb") as fh:
            ca_key = pki.load_key(fh.read())
        certificates = decide(p["requests"], ca, ca_key, p["valid_days"], p["renew_days"], module.check_mode, pki)
    except (OSError, ValueError, KeyError) as exc:
        module.fail_json(msg=f"signing with {p['ca_cert']}: {type(exc).__name__}: {exc}")
    module.exit_json(changed=any(c["signed"] for c in certificates), certificates=certificates)


if __name__ == "__main__":
    main()
