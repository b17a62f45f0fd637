#!/usr/bin/python
"""Ansible module: checks a bundle server end to end, as its clients see it, in one run; names every problem."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: bundle_health
short_description: Check a bundle server's files, apt repo, registry and time service through the nodes' address
description:
  - Runs every health check of the bundle server in one module run, through the address the nodes use and with the
    bundle CA as the only trust anchor, and fails with every problem at once, each with where to look.
  - "Checks: a sample file's sha256 as served; the apt suite's signed release; that the registry lists every
    repository of the bundle and serves every image by tag with the manifest's digest; that a push from the network
    is refused (403); that the registry's own port does not answer on the network address; that chrony runs."
  - Changes nothing on the host.
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  files_url: {description: "The file server's base URL (https://ADDRESS:PORT)., type: str, required: true"}
  registry_url: {description: The registry's base URL., type: str, required: true}
  ca_path: {description: The bundle CA certificate, the only one trusted., type: path, required: true}
  sample_file:
    description: A file of the bundle, C(path) relative to the file server's root, and its C(sha256).
    type: dict
  apt_suite: {description: The apt suite whose InRelease must be served., type: str, required: true}
  repositories: {description: The registry repositories the bundle holds., type: list, elements: str, default: []}
  images: {description: "Image references by tag (repo:tag) and their digests (sha256:...).", type: dict, default: {}}
  registry_local_port:
    description: The registry's own port, which must not answer on the network address.
    type: int
    required: true
  bundle_dir: {description: The served bundle's directory, for the messages., type: str, default: ""}
  chrony: {description: Check that chrony answers C(chronyc tracking)., type: bool, default: true}
  timeout: {description: Seconds for each request., type: int, default: 10}
  retries: {description: Tries of the registry's first answer, a second apart (it may be starting)., type: int, default: 10}
"""

EXAMPLES = r"""
- name: Health-check the bundle server
  airgap.kubernetes.bundle_health:
    files_url: https://10.10.0.10:443
    registry_url: https://10.10.0.10:5000
    ca_path: /etc/airgap-kubernetes/pki/ca.crt
    apt_suite: bookworm
    repositories: [pause]
    images: {"registry.k8s.io/pause:3.10": "sha256:..."}
    registry_local_port: 5001
"""

RETURN = r"""
checked:
  description: The checks that ran, in order.
  returned: always
  type: list
  elements: str
"""

import hashlib
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.docker.distribution.manifest.v2+json"])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a health check reports what the server answers itself
        return None


def _opener(ca_path: str) -> urllib.request.OpenerDirector:
    context = ssl.create_default_context(cafile=ca_path)  # this CA alone: no system store
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())


def request(opener, url: str, method: str = "GET", headers: dict | None = None, timeout: int = 10):
    """(status, headers, body) of one request; an HTTP error status is an answer, not an exception."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, (b"" if method == "HEAD" else resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, b""


def _manifest_url(registry_url: str, ref: str) -> str:
    """repo:tag (after the registry host, if any) -> /v2/repo/manifests/tag."""
    path = re.sub(r":([^:/]+)$", r"/manifests/\1", ref)
    return f"{registry_url}/v2/{path}"


def check(p: dict, run_command=None) -> tuple[list[str], list[str]]:
    """(checks run, problems) for the module's parameters."""
    opener, timeout, checked, problems = _opener(p["ca_path"]), p["timeout"], [], []

    def attempt(name: str, fn) -> None:
        checked.append(name)
        try:
            problem = fn()
        except (OSError, ssl.SSLError, ValueError) as exc:  # URLError is an OSError
            problem = f"{name}: {getattr(exc, 'reason', None) or exc}"
        if problem:
            problems.append(problem)

    def sample() -> str | None:
        sample_file = p["sample_file"]
        status, _, body = request(opener, f"{p['files_url']}/{sample_file['path']}", timeout=timeout)
        if status != 200:
            return f"files: {sample_file['path']} answered HTTP {status}: check the nginx root ({p['bundle_dir']})"
        got = hashlib.sha256(body).hexdigest()
        if got != sample_file["sha256"]:
            return (f"files: {sample_file['path']} as served has sha256 {got}, the manifest says {sample_file['sha256']}: "
                    f"check the nginx root ({p['bundle_dir']})")
        return None

    def apt() -> str | None:
        path = f"apt/dists/{p['apt_suite']}/InRelease"
        status, _, _ = request(opener, f"{p['files_url']}/{path}", method="HEAD", timeout=timeout)
        return None if status == 200 else f"apt: {path} answered HTTP {status}: the bundle's apt repo is not served"

    def catalog() -> str | None:
        status, body = None, b""
        for n in range(max(1, p["retries"])):
            try:
                status, _, body = request(opener, f"{p['registry_url']}/v2/_catalog?n=1000", timeout=timeout)
            except OSError:
                if n + 1 == max(1, p["retries"]):
                    raise
            if status == 200:
                break
            time.sleep(1)
        if status != 200:
            return f"registry: /v2/_catalog answered HTTP {status}: see journalctl -u docker-registry and -u nginx"
        missing = sorted(set(p["repositories"]) - set(json.loads(body).get("repositories") or []))
        return f"registry: does not serve {missing}: see journalctl -u docker-registry" if missing else None

    def digests() -> str | None:
        wrong = []
        for ref, digest in sorted(p["images"].items()):
            status, headers, _ = request(opener, _manifest_url(p["registry_url"], ref), method="HEAD",
                                         headers={"Accept": MANIFEST_TYPES}, timeout=timeout)
            served = headers.get("Docker-Content-Digest") if headers else None
            if status != 200 or served != digest:
                wrong.append(f"{ref} (HTTP {status}, digest {served}, the manifest says {digest})")
        return f"registry: images not served as the bundle has them: {'; '.join(wrong)}" if wrong else None

    def push() -> str | None:
        status, _, _ = request(opener, f"{p['registry_url']}/v2/airgap-health/push-probe/blobs/uploads/",
                               method="POST", timeout=timeout)
        return None if status == 403 else (f"registry: a push from the network answered HTTP {status}, not 403: "
                                           "nginx must refuse every write method")

    def local_port() -> str | None:
        host = urllib.parse.urlsplit(p["registry_url"]).hostname
        try:
            with socket.create_connection((host, p["registry_local_port"]), timeout=1):
                return (f"registry: docker-registry answers on {host}:{p['registry_local_port']}; it must listen on "
                        "127.0.0.1 only, behind nginx")
        except OSError:
            return None

    def chrony() -> str | None:
        rc, _, err = run_command(["chronyc", "-n", "tracking"])
        return None if rc == 0 else f"time: chronyc tracking failed ({err.strip()}): see journalctl -u chrony"

    if p["sample_file"]:
        attempt("files", sample)
    attempt("apt", apt)
    attempt("registry catalog", catalog)
    attempt("registry digests", digests)
    attempt("registry push refused", push)
    attempt("registry local port", local_port)
    if p["chrony"] and run_command:
        attempt("time", chrony)
    return checked, problems


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "files_url": {"type": "str", "required": True},
            "registry_url": {"type": "str", "required": True},
            "ca_path": {"type": "path", "required": True},
            "sample_file": {"type": "dict"},
            "apt_suite": {"type": "str", "required": True},
            "repositories": {"type": "list", "elements": "str", "default": []},
            "images": {"type": "dict", "default": {}},
            "registry_local_port": {"type": "int", "required": True},
            "bundle_dir": {"type": "str", "default": ""},
            "chrony": {"type": "bool", "default": True},
            "timeout": {"type": "int", "default": 10},
            "retries": {"type": "int", "default": 10},
        },
        supports_check_mode=True,
    )
    checked, problems = check(module.params, lambda argv: module.run_command(argv))
    if problems:
        module.fail_json(msg=f"The bundle server is not healthy ({len(problems)} problem(s)):\n- " + "\n- ".join(problems),
                         problems=problems, checked=checked)
    module.exit_json(changed=False, checked=checked)


if __name__ == "__main__":
    main()
