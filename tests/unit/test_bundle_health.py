"""The bundle_health module against a real loopback HTTPS server that plays the bundle server (files, apt, registry
behind nginx): a healthy server passes every check, and a broken one gets every problem named at once."""
from __future__ import annotations

import hashlib
import http.server
import json
import socket
import ssl
import threading

import pytest

from ansible_collections.airgap.kubernetes.plugins.modules import bundle_health
from test_bundle_ca_scope import _issue

SAMPLE = b"a file of the bundle\n"
DIGEST = "sha256:" + "ab" * 32


class Served:
    """What the fake bundle server answers; tests break one part at a time."""

    def __init__(self):
        self.sample, self.repositories, self.digests, self.push_status = SAMPLE, ["pause"], {"pause:3.10": DIGEST}, 403


def _handler(served: Served):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status: int, body: bytes = b"", headers: dict | None = None):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            if self.path == "/files/sample":
                return self._answer(200, served.sample)
            if self.path.startswith("/v2/_catalog"):
                return self._answer(200, json.dumps({"repositories": served.repositories}).encode())
            return self._answer(404)

        def do_HEAD(self):
            if self.path == "/apt/dists/bookworm/InRelease":
                return self._answer(200)
            for ref, digest in served.digests.items():
                repo, tag = ref.rsplit(":", 1)
                if self.path == f"/v2/{repo}/manifests/{tag}" and "manifest" in self.headers.get("Accept", ""):
                    return self._answer(200, headers={"Docker-Content-Digest": digest})
            return self._answer(404)

        def do_POST(self):
            return self._answer(served.push_status)

    return Handler


@pytest.fixture
def server(tmp_path):
    ca, cert, key = _issue(tmp_path)
    served = Served()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    params = {"files_url": url, "registry_url": url, "ca_path": str(ca), "apt_suite": "bookworm",
              "sample_file": {"path": "files/sample", "sha256": hashlib.sha256(SAMPLE).hexdigest()},
              "repositories": ["pause"], "images": {"pause:3.10": DIGEST},
              "registry_local_port": closed.getsockname()[1], "bundle_dir": "/srv/bundle", "chrony": True,
              "timeout": 5, "retries": 2}
    yield served, params
    closed.close()
    httpd.shutdown()
    httpd.server_close()


def chrony_ok(argv):
    assert argv == ["chronyc", "-n", "tracking"]
    return 0, "Leap status : Normal\n", ""


def test_a_healthy_bundle_server_passes_every_check(server):
    _, params = server
    checked, problems = bundle_health.check(params, chrony_ok)
    assert problems == []
    assert checked == ["files", "apt", "registry catalog", "registry digests", "registry push refused",
                       "registry local port", "time"]


def test_every_problem_is_named_at_once_with_where_to_look(server):
    served, params = server
    served.sample, served.repositories, served.push_status = b"tampered\n", [], 201
    served.digests = {"pause:3.10": "sha256:" + "cd" * 32}
    listening = socket.create_server(("127.0.0.1", 0))
    params["registry_local_port"] = listening.getsockname()[1]
    try:
        _, problems = bundle_health.check(params, lambda argv: (1, "", "506 Cannot talk to daemon"))
    finally:
        listening.close()
    assert len(problems) == 6, problems
    text = "\n".join(problems)
    assert "files/sample as served has sha256" in text and "check the nginx root (/srv/bundle)" in text
    assert "does not serve ['pause']" in text
    assert f"pause:3.10 (HTTP 200, digest sha256:{'cd' * 32}, the manifest says {DIGEST})" in text
    assert "answered HTTP 201, not 403" in text
    assert f"docker-registry answers on 127.0.0.1:{params['registry_local_port']}" in text
    assert "chronyc tracking failed (506 Cannot talk to daemon)" in text


def test_a_server_that_another_ca_vouches_for_fails_every_request_by_tls(server, tmp_path):
    _, params = server
    other = tmp_path / "other"
    other.mkdir()
    params["ca_path"] = str(_issue(other)[0])
    _, problems = bundle_health.check(params, chrony_ok)
    assert [p.split(":")[0] for p in problems] == ["files", "apt", "registry catalog", "registry digests",
                                                   "registry push refused"], problems
    assert all("CERTIFICATE_VERIFY_FAILED" in p for p in problems), problems
