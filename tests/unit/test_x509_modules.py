"""The x509_requests and x509_sign modules with real python3-cryptography: keys made once and kept, requests kept
while they match, and a certificate signed only when none is current (no certificate, another CA, another key,
other names, or an expiry within the renewal window)."""
from __future__ import annotations

import datetime
import os
import pwd

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.airgap.kubernetes.plugins.module_utils import x509_pki as pki
from ansible_collections.airgap.kubernetes.plugins.modules import x509_requests, x509_sign

ME = pwd.getpwuid(os.getuid()).pw_name


def make_ca(cn="test etcd CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert, key


def spec(tmp_path, name="server", sans=("DNS:etcd1", "IP:10.0.0.1")):
    return {"name": name, "dir": str(tmp_path / "pki"), "common_name": "etcd1", "sans": list(sans),
            "usages": ["serverAuth", "clientAuth"], "owner": ME, "restart": True}


def requests_for(specs):
    out, changed = [], []
    for s in specs:
        request, paths = x509_requests.prepare(s, False, pki)
        out.append(request)
        changed += paths
    return out, changed


def sign(requests, ca, renew_days=30, valid_days=365):
    return x509_sign.decide(requests, ca[0], ca[1], valid_days, renew_days, False, pki)


def write(certificates):
    for cert in certificates:
        with open(cert["path"], "w", encoding="utf-8") as fh:
            fh.write(cert["certificate"])


def test_a_new_certificate_gets_a_private_key_a_request_and_a_certificate_of_this_ca(tmp_path):
    ca = make_ca()
    requests, changed = requests_for([spec(tmp_path)])
    key = tmp_path / "pki" / "server.key"
    assert changed == [str(tmp_path / "pki"), str(key), str(tmp_path / "pki" / "server.csr")]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert requests[0]["restart"] is True and requests[0]["current"] == "" and "csr" in requests[0]
    (signed,) = sign(requests, ca)
    assert signed["signed"] and signed["reason"] == "no certificate yet" and signed["old_not_after"] == ""
    cert = x509.load_pem_x509_certificate(signed["certificate"].encode())
    assert pki.issued_by(cert, ca[0])
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    assert {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value} == \
        {"etcd1", "10.0.0.1"}
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert cert.public_key().public_numbers() == private.public_key().public_numbers()


def test_a_rerun_keeps_the_key_the_request_and_the_certificate(tmp_path):
    ca = make_ca()
    requests, _ = requests_for([spec(tmp_path)])
    write(sign(requests, ca))
    key_before = (tmp_path / "pki" / "server.key").read_bytes()
    requests, changed = requests_for([spec(tmp_path)])
    assert changed == []
    (kept,) = sign(requests, ca)
    assert not kept["signed"] and kept["certificate"] == (tmp_path / "pki" / "server.crt").read_text()
    assert (tmp_path / "pki" / "server.key").read_bytes() == key_before


def test_new_names_make_a_new_request_and_a_new_certificate_from_the_same_key(tmp_path):
    ca = make_ca()
    requests, _ = requests_for([spec(tmp_path)])
    write(sign(requests, ca))
    requests, changed = requests_for([spec(tmp_path, sans=("DNS:etcd1", "IP:10.0.0.2"))])
    assert changed == [str(tmp_path / "pki" / "server.csr")]
    (signed,) = sign(requests, ca)
    assert signed["signed"] and signed["reason"] == "its subject, names or usages differ from the request"


def test_a_certificate_of_another_ca_or_near_its_expiry_is_signed_again(tmp_path):
    ca, other = make_ca(), make_ca("another CA")
    requests, _ = requests_for([spec(tmp_path)])
    write(sign(requests, other))
    requests, _ = requests_for([spec(tmp_path)])
    assert sign(requests, ca)[0]["reason"] == "another CA signed it"
    write(sign(requests, ca, valid_days=10))
    requests, _ = requests_for([spec(tmp_path)])
    (renewed,) = sign(requests, ca, renew_days=30)
    assert renewed["signed"] and renewed["reason"] == "it expires within the renewal window"
    assert renewed["old_not_after"] < renewed["not_after"]


def test_a_certificate_for_another_key_is_signed_again(tmp_path):
    ca = make_ca()
    requests, _ = requests_for([spec(tmp_path)])
    write(sign(requests, ca))
    (tmp_path / "pki" / "server.key").unlink()
    requests, changed = requests_for([spec(tmp_path)])
    assert str(tmp_path / "pki" / "server.key") in changed
    assert sign(requests, ca)[0]["reason"] == "it holds another key"


def test_a_certificate_signed_by_hand_with_the_ca_is_kept_while_it_matches(tmp_path):
    """As openssl x509 -req -copy_extensions copy signs it (no key identifiers): the same holder, the same CA."""
    ca = make_ca()
    requests, _ = requests_for([spec(tmp_path)])
    csr = x509.load_pem_x509_csr(requests[0]["csr"].encode())
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    builder = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca[0].subject)
               .public_key(csr.public_key()).serial_number(1).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=100)))
    for ext in csr.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    (tmp_path / "pki" / "server.crt").write_bytes(builder.sign(ca[1], hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM))
    requests, _ = requests_for([spec(tmp_path)])
    assert not sign(requests, ca)[0]["signed"]


def test_a_bad_name_is_refused_with_the_forms_that_work(tmp_path):
    with pytest.raises(ValueError, match="use DNS:NAME or IP:ADDRESS"):
        requests_for([spec(tmp_path, sans=("URI:spiffe://x",))])
