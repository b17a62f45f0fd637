"""The bundle_fetch module against a real loopback HTTPS server whose certificate only a throwaway CA vouches for: a
file that holds its sha256 is not fetched again, a wrong sha256 leaves the destination untouched, and a server that
is down is retried and then named."""
from __future__ import annotations

import hashlib
import os
import socket

import pytest

from ansible_collections.airgap.kubernetes.plugins.modules import bundle_fetch as bf
from test_bundle_ca_scope import bundle_https  # noqa: F401 - the fixture

UID, GID = os.getuid(), os.getgid()
DATA = b"kubelet\n"
SHA = hashlib.sha256(DATA).hexdigest()


class Module:
    """The two things the module's functions read from AnsibleModule."""

    def __init__(self, ca_file=None, check_mode=False, retries=0, delay=0):
        self.check_mode = check_mode
        self.params = {"ca_file": str(ca_file) if ca_file else None, "timeout": 5, "retries": retries, "delay": delay}


def item(url, dest, sha256=SHA, mode="0755"):
    return {"url": url, "dest": str(dest), "sha256": sha256, "mode": mode, "owner": str(UID), "group": str(GID)}


def test_fetches_a_file_with_its_mode_then_keeps_it_without_a_request(tmp_path, bundle_https):  # noqa: F811
    base, root, ca = bundle_https
    (root / "kubelet").write_bytes(DATA)
    dest = tmp_path / "kubelet"
    assert bf.converge(Module(ca), item(f"{base}/kubelet", dest)) is True
    assert dest.read_bytes() == DATA and dest.stat().st_mode & 0o7777 == 0o755
    (root / "kubelet").unlink()  # a second run must not ask the server
    assert bf.converge(Module(ca), item(f"{base}/kubelet", dest)) is False
    dest.chmod(0o600)
    assert bf.converge(Module(ca), item(f"{base}/kubelet", dest)) is True
    assert dest.stat().st_mode & 0o7777 == 0o755


def test_a_wrong_sha256_leaves_the_destination_as_it_was_and_names_both_checksums(tmp_path, bundle_https):  # noqa: F811
    base, root, ca = bundle_https
    (root / "kubelet").write_bytes(b"tampered\n")
    dest = tmp_path / "kubelet"
    dest.write_bytes(b"the running one\n")
    with pytest.raises(ValueError) as exc:
        bf.converge(Module(ca, retries=2), item(f"{base}/kubelet", dest))
    assert hashlib.sha256(b"tampered\n").hexdigest() in str(exc.value) and SHA in str(exc.value)
    assert dest.read_bytes() == b"the running one\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".kubelet")) == []


def test_https_is_verified_against_the_bundle_ca_alone(tmp_path, bundle_https):  # noqa: F811
    base, root, ca = bundle_https
    (root / "kubelet").write_bytes(DATA)
    other_ca = tmp_path / "other-ca"
    other_ca.mkdir()
    from test_bundle_ca_scope import _issue
    wrong_ca = _issue(other_ca)[0]
    with pytest.raises(ValueError, match="TLS verification against .* failed"):
        bf.converge(Module(wrong_ca), item(f"{base}/kubelet", tmp_path / "kubelet"))
    with pytest.raises(ValueError, match="the bundle CA file .* does not exist"):
        bf.converge(Module(tmp_path / "none.crt"), item(f"{base}/kubelet", tmp_path / "kubelet"))
    assert not (tmp_path / "kubelet").exists()


def test_a_missing_file_is_named_at_once_and_a_server_that_is_down_after_the_retries(tmp_path, bundle_https):  # noqa: F811
    base, root, ca = bundle_https
    with pytest.raises(ValueError, match="answers 404 .* lacks this file"):
        bf.converge(Module(ca, retries=3, delay=5), item(f"{base}/kubelet", tmp_path / "kubelet"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ValueError, match=r"after 3 tries\): check that the bundle server runs"):
        bf.converge(Module(ca, retries=2), item(f"https://127.0.0.1:{port}/kubelet", tmp_path / "kubelet"))


def test_check_mode_reports_a_change_and_writes_nothing(tmp_path, bundle_https):  # noqa: F811
    base, root, ca = bundle_https
    (root / "kubelet").write_bytes(DATA)
    assert bf.converge(Module(ca, check_mode=True), item(f"{base}/kubelet", tmp_path / "kubelet")) is True
    assert not (tmp_path / "kubelet").exists()


def test_bad_input_is_refused_before_any_request(tmp_path):
    with pytest.raises(ValueError, match="not 64 hex digits"):
        bf.converge(Module(), item("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc"))
    with pytest.raises(ValueError, match="is not a directory"):
        bf.converge(Module(), item("http://127.0.0.1:9/x", tmp_path / "no" / "x"))
