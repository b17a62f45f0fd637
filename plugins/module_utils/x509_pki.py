"""Keys, signing requests and certificates for the etcd CA's leaf certificates (modules x509_requests and x509_sign),
with python3-cryptography (Debian 12's 38 and later). A request or certificate that already matches what is asked is
kept, so a rerun signs nothing."""
from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

USAGES = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}
ASN1_TIME = "%Y%m%d%H%M%SZ"


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())  # ECDSA P-256: RSA 4096 took 6 s a key on the lab's 2 cores
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes):
    return serialization.load_pem_private_key(pem, None)


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _subject(spec: dict) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec["organization"])] if spec.get("organization") else []
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, spec["common_name"])])


def _names(sans: list[str]) -> list[x509.GeneralName]:
    out = []
    for san in sans:
        kind, _, value = san.partition(":")
        if kind == "DNS":
            out.append(x509.DNSName(value))
        elif kind == "IP":
            out.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            raise ValueError(f"subject alternative name {san!r}: use DNS:NAME or IP:ADDRESS")
    return out


def _ext(obj, cls):
    try:
        return obj.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _shape(obj) -> tuple:
    """What a request or certificate says about its holder: subject (unordered), names and usages."""
    san = _ext(obj, x509.SubjectAlternativeName)
    eku = _ext(obj, x509.ExtendedKeyUsage)
    return (frozenset((a.oid.dotted_string, a.value) for a in obj.subject),
            frozenset(str(n.value) for n in san) if san else frozenset(),
            frozenset(u.dotted_string for u in eku) if eku else frozenset())


def wanted_shape(spec: dict) -> tuple:
    return (frozenset((a.oid.dotted_string, a.value) for a in _subject(spec)),
            frozenset(str(n.value) for n in _names(spec.get("sans") or [])),
            frozenset(USAGES[u].dotted_string for u in spec["usages"]))


def build_csr(key, spec: dict) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(spec))
    if spec.get("sans"):
        builder = builder.add_extension(x509.SubjectAlternativeName(_names(spec["sans"])), critical=False)
    builder = builder.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                  key_encipherment=True, data_encipherment=False, key_agreement=False,
                                                  key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                  decipher_only=False), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([USAGES[u] for u in spec["usages"]]), critical=False)
    return builder.sign(key, hashes.SHA256())


def csr_matches(csr: x509.CertificateSigningRequest, key, spec: dict) -> bool:
    return csr.is_signature_valid and _public_der(csr.public_key()) == _public_der(key.public_key()) \
        and _shape(csr) == wanted_shape(spec)


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def not_after_asn1(cert: x509.Certificate) -> str:
    return _not_after(cert).strftime(ASN1_TIME)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    public = ca.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        else:
            return False
    except Exception:  # cryptography's InvalidSignature, or a hash the key cannot use
        return False
    return True


def keep_reason(current: x509.Certificate, csr: x509.CertificateSigningRequest, ca: x509.Certificate,
                renew_before: datetime.datetime) -> str | None:
    """None when the current certificate may stay; else why it is signed again."""
    if not issued_by(current, ca):
        return "another CA signed it"
    if _public_der(current.public_key()) != _public_der(csr.public_key()):
        return "it holds another key"
    if _shape(current) != _shape(csr):
        return "its subject, names or usages differ from the request"
    if _not_after(current) <= renew_before:
        return "it expires within the renewal window"
    return None


def sign(csr: x509.CertificateSigningRequest, ca: x509.Certificate, ca_key, days: int,
         now: datetime.datetime) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
               .public_key(csr.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now.replace(tzinfo=None)).not_valid_after((now + datetime.timedelta(days=days))
                                                                           .replace(tzinfo=None)))
    for ext in csr.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),
                                    critical=False)
    return builder.sign(ca_key, hashes.SHA256())
