"""Specification: the bundle server's nginx speaks TLS 1.2 and 1.3 only, even where the host's OpenSSL allows older
versions, and nothing listens on port 80."""
from __future__ import annotations

import socket
import subprocess

import pytest

from . import served_bundle

pytestmark = pytest.mark.lab

# Debian's OpenSSL 3 refuses TLS < 1.2 at its default security level whatever nginx asks for, which would hide
# nginx's own setting; older OpenSSLs and sites' crypto policies allow them. So nginx here runs with a system-wide
# OpenSSL policy that allows TLS 1.0 and 1.1, and only ssl_protocols stands in their way.
PERMISSIVE_OPENSSL = """openssl_conf = init
[init]
ssl_conf = ssl
[ssl]
system_default = permissive
[permissive]
MinProtocol = TLSv1
CipherString = DEFAULT:@SECLEVEL=0
"""


@pytest.fixture(scope="module")
def server(serving_node) -> str:
    node, address, _ = serving_node
    served_bundle.docker("exec", node, "sh", "-euc", f"""
        printf '%s' '{PERMISSIVE_OPENSSL}' > /etc/ssl/permissive.cnf
        mkdir -p /etc/systemd/system/nginx.service.d
        printf '[Service]\\nEnvironment=OPENSSL_CONF=/etc/ssl/permissive.cnf\\n' \\
            > /etc/systemd/system/nginx.service.d/permissive-openssl.conf
        systemctl daemon-reload && systemctl restart nginx""")
    return address


def _handshake(address: str, port: int, version: str) -> subprocess.CompletedProcess:
    # SECLEVEL=0: the host's OpenSSL would not offer TLS 1.0/1.1 at its default level, so a refusal would be its own.
    return subprocess.run(["openssl", "s_client", "-connect", f"{address}:{port}", f"-{version}",
                           "-cipher", "DEFAULT:@SECLEVEL=0"],
                          input="", text=True, capture_output=True, timeout=30)


@pytest.mark.parametrize("port", [8443, 5000])
@pytest.mark.parametrize("version", ["tls1", "tls1_1"])
def test_tls_before_1_2_is_refused(server: str, port: int, version: str) -> None:
    proc = _handshake(server, port, version)
    assert proc.returncode != 0 and "Cipher is (NONE)" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("port", [8443, 5000])
@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_tls_1_2_and_1_3_are_accepted(server: str, port: int, version: str) -> None:
    proc = _handshake(server, port, version)
    name = {"tls1_2": "TLSv1.2", "tls1_3": "TLSv1.3"}[version]
    assert proc.returncode == 0 and f"New, {name}, Cipher is " in proc.stdout, proc.stdout


def test_nothing_listens_on_port_80(server: str) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server, 80), timeout=10).close()
