"""Specification of build-bundle's pure parts: resumable verified downloads, the plan, the apt closure, progress lines."""
from __future__ import annotations

import hashlib
import http.server
import io
import re
import subprocess
import threading
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.tools import bundle_apt
from ansible_collections.airgap.kubernetes.tools import bundle_common
from ansible_collections.airgap.kubernetes.tools import bundle_downloads
from ansible_collections.airgap.kubernetes.tools import bundle_images
from ansible_collections.airgap.kubernetes.tools import bundle_plan
from ansible_collections.airgap.kubernetes.tools import progress as prog
from ansible_collections.airgap.kubernetes.tools import list_artifacts

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file; honours `Range: bytes=N-`; /cut closes after half; /flaky fails the first request."""

    requests: list = []
    flaky_left = 0

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).requests.append((self.path, self.headers.get("Range")))
        if self.path == "/missing":
            self.send_error(404)
            return
        if self.path == "/flaky" and type(self).flaky_left > 0:
            type(self).flaky_left -= 1
            self.send_error(503)
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and self.path != "/norange" else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if self.path == "/cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def upstream():
    _Upstream.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- downloads

def test_download_fetches_and_verifies_a_file(upstream: str, tmp_path: Path) -> None:
    dest = tmp_path / "files" / "x"
    assert bundle_downloads.download(f"{upstream}/file", dest, SHA, "x") == "downloaded"
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("x.part").exists()


def test_download_continues_a_partial_file_with_a_range_request(upstream: str, tmp_path: Path) -> None:
    dest = tmp_path / "x"
    (tmp_path / "x.part").write_bytes(PAYLOAD[:300_000])
    assert bundle_downloads.download(f"{upstream}/file", dest, SHA, "x") == "resumed"
    assert dest.read_bytes() == PAYLOAD
    assert _Upstream.requests == [("/file", "bytes=300000-")]


def test_download_resumes_after_the_connection_drops_midway(upstream: str, tmp_path: Path) -> None:
    with pytest.raises(bundle_common.BuildError, match="failed 2 times"):
        bundle_downloads.download(f"{upstream}/cut", tmp_path / "x", SHA, "x", retries=1, backoff=0)
    # Each attempt kept what arrived and asked only for the rest.
    assert _Upstream.requests[0] == ("/cut", None)
    assert _Upstream.requests[1][1] == f"bytes={len(PAYLOAD) // 2}-"
    assert (tmp_path / "x.part").stat().st_size > len(PAYLOAD) // 2


def test_download_starts_over_when_the_server_ignores_range(upstream: str, tmp_path: Path) -> None:
    (tmp_path / "x.part").write_bytes(b"garbage")
    bundle_downloads.download(f"{upstream}/norange", tmp_path / "x", SHA, "x")
    assert (tmp_path / "x").read_bytes() == PAYLOAD


def test_download_retries_server_errors(upstream: str, tmp_path: Path) -> None:
    _Upstream.flaky_left = 2
    bundle_downloads.download(f"{upstream}/flaky", tmp_path / "x", SHA, "x", retries=3, backoff=0)
    assert [r[0] for r in _Upstream.requests] == ["/flaky"] * 3


def test_download_keeps_a_verified_file_without_fetching(upstream: str, tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(PAYLOAD)
    assert bundle_downloads.download(f"{upstream}/file", tmp_path / "x", SHA, "x") == "present"
    assert _Upstream.requests == []


def test_a_missing_upstream_file_is_not_retried_and_names_the_url(upstream: str, tmp_path: Path) -> None:
    with pytest.raises(bundle_common.BuildError, match=r"etcd: http://127\.0\.0\.1:\d+/missing answered 404.*upstream_bases"):
        bundle_downloads.download(f"{upstream}/missing", tmp_path / "x", SHA, "etcd", retries=3, backoff=0)
    assert len(_Upstream.requests) == 1


def test_checksum_mismatch_names_artifact_url_expected_and_got(upstream: str, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(bundle_common.ChecksumError) as err:
        bundle_downloads.download(f"{upstream}/file", tmp_path / "kubelet", wrong, "kubelet")
    message = str(err.value)
    assert message.startswith(f"kubelet: {upstream}/file has sha256 {SHA}, the catalog expects {wrong}")
    assert "catalog overlay" in message
    # Nothing unverified is left behind to be packed.
    assert list(tmp_path.iterdir()) == []


def test_download_all_reports_every_failure_at_once(upstream: str, tmp_path: Path) -> None:
    jobs = [bundle_plan.FileJob("a", "1", f"{upstream}/missing", "files/a", SHA),
            bundle_plan.FileJob("b", "1", f"{upstream}/file", "files/b", "1" * 64),
            bundle_plan.FileJob("c", "1", f"{upstream}/file", "files/c", SHA)]
    with pytest.raises(bundle_common.BuildError) as err:
        bundle_downloads.download_all(jobs, tmp_path, prog.Progress(io.StringIO(), live=False), workers=3)
    assert "a: " in str(err.value) and "b: " in str(err.value)
    assert (tmp_path / "files" / "c").read_bytes() == PAYLOAD


def test_prune_removes_what_the_plan_no_longer_has(tmp_path: Path) -> None:
    for rel in ("files/h/keep", "files/h/old/drop", "files/h/drop.part"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert sorted(bundle_downloads.prune(tmp_path / "files", {"files/h/keep"}, tmp_path)) == ["files/h/drop.part", "files/h/old/drop"]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["files", "files/h", "files/h/keep"]


# --------------------------------------------------------------------------- the plan comes from the resolver

def _lab_catalog() -> tuple:
    catalog, config = list_artifacts.load(None, ["kube_network_plugin=bridge", "crictl_enabled=false"])
    return catalog, config


def test_plan_holds_exactly_the_resolvers_lists() -> None:
    catalog, config = _lab_catalog()
    plan = bundle_plan.make_plan(catalog, config, ["amd64"], ["bookworm"])
    resolved = list_artifacts.collect(catalog, config, ["amd64"], None, "upstream", ["debian"])
    assert sorted(j.url for j in plan.files) == sorted(e["url"] for e in resolved if e["kind"] == "file")
    assert sorted(j.source for j in plan.images) == sorted(e["ref"] for e in resolved if e["kind"] == "image")
    assert sorted(plan.packages) == sorted(e["package"] for e in resolved if e["kind"] == "package")
    assert all(j.path == "files/" + j.url.split("://", 1)[1] for j in plan.files)


def test_plan_keeps_a_disabled_component_out() -> None:
    catalog, config = _lab_catalog()
    plan = bundle_plan.make_plan(catalog, config, ["amd64"], [])
    assert "crictl" not in {j.name for j in plan.files}
    assert "calico-node" not in {j.name for j in plan.images}
    assert "containernetworking-plugins" in plan.packages


def test_plan_fetches_through_upstream_bases_but_stores_under_the_upstream_path() -> None:
    catalog, config = _lab_catalog()
    config = {**config, "upstream_bases": {"dl.k8s.io": "http://127.0.0.1:8080/dl", "registry.k8s.io": "127.0.0.1:5001/k8s"}}
    plan = bundle_plan.make_plan(catalog, config, ["amd64"], [])
    kubeadm = next(j for j in plan.files if j.name == "kubeadm")
    assert kubeadm.url.startswith("http://127.0.0.1:8080/dl/release/v")
    assert kubeadm.path.startswith("files/dl.k8s.io/release/v")
    pause = next(j for j in plan.images if j.name == "pause")
    assert pause.source.startswith("127.0.0.1:5001/k8s/pause:")
    assert pause.canonical.startswith("registry.k8s.io/pause:")


def test_a_multiarch_image_is_copied_once_for_every_arch() -> None:
    catalog, config = _lab_catalog()
    plan = bundle_plan.make_plan(catalog, config, ["amd64", "arm64"], [])
    pause = [j for j in plan.images if j.name == "pause"]
    assert len(pause) == 1 and pause[0].arches == ["amd64", "arm64"]
    assert "--all" in bundle_images.skopeo_copy_args(pause[0], "127.0.0.1:1", ["amd64", "arm64"], [])


def test_one_arch_of_a_multiarch_image_copies_that_platform_only() -> None:
    job = bundle_plan.ImageJob("pause", "3.2", "registry.k8s.io/pause:3.2", "127.0.0.1:5001/k8s/pause:3.2", None, True, ["arm64"])
    args = bundle_images.skopeo_copy_args(job, "127.0.0.1:9", ["amd64", "arm64"], [])
    assert args[args.index("--override-arch") + 1] == "arm64"
    assert "--src-tls-verify=false" in args  # loopback upstreams speak plain HTTP
    assert args[-2:] == ["docker://127.0.0.1:5001/k8s/pause:3.2", "docker://127.0.0.1:9/registry.k8s.io/pause:3.2"]


def test_an_image_pinned_by_digest_is_copied_by_digest() -> None:
    job = bundle_plan.ImageJob("pause", "3.2", "registry.k8s.io/pause:3.2", "registry.k8s.io/pause:3.2", "sha256:" + "a" * 64,
                      True, ["amd64", "arm64"])
    args = bundle_images.skopeo_copy_args(job, "127.0.0.1:9", ["amd64", "arm64"], [])
    assert args[-2] == "docker://registry.k8s.io/pause@sha256:" + "a" * 64
    assert "--src-tls-verify=false" not in args


def test_os_names_map_to_apt_suites() -> None:
    assert bundle_plan.suites_for(["debian12", "debian13"]) == ["bookworm", "trixie"]
    assert bundle_plan.suites_for(["trixie", ""]) == ["trixie"]
    with pytest.raises(bundle_common.BuildError, match="--os 'ubuntu22' is not supported: pick from debian12, debian13"):
        bundle_plan.suites_for(["ubuntu22"])


# --------------------------------------------------------------------------- apt closure

PRINT_URIS = """\
Reading package lists...
The following NEW packages will be installed:
  conntrack libc6
'http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.36-9%2bdeb12u10_amd64.deb' libc6_2.36-9+deb12u10_amd64.deb 2757936 MD5Sum:0123
'http://deb.debian.org/debian/pool/main/c/conntrack-tools/conntrack_1.4.7-1%2bb2_amd64.deb' conntrack_1.4.7-1+b2_amd64.deb 35904 MD5Sum:4567
'http://deb.debian.org/debian/pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb' zlib1g_1%3a1.2.13.dfsg-1_amd64.deb 1 MD5Sum:89
"""


def test_closure_list_is_every_deb_apt_would_fetch() -> None:
    uris = bundle_apt.parse_print_uris(PRINT_URIS)
    assert [u.filename for u in uris] == ["libc6_2.36-9+deb12u10_amd64.deb", "conntrack_1.4.7-1+b2_amd64.deb",
                                          "zlib1g_1.2.13.dfsg-1_amd64.deb"]  # the pool's name: no epoch
    assert uris[1].url.endswith("conntrack_1.4.7-1%2bb2_amd64.deb") and uris[1].size == 35904


def test_closure_debs_are_checked_against_the_signed_index() -> None:
    index = ("Package: conntrack\nFilename: pool/main/c/conntrack-tools/conntrack_1.4.7-1+b2_amd64.deb\n"
             "SHA256: " + "c" * 64 + "\n\nPackage: x\nFilename: pool/main/x/x_1_all.deb\nMD5sum: 1\n")
    assert bundle_apt.index_sha256(index) == {"conntrack_1.4.7-1+b2_amd64.deb": "c" * 64}


def test_apt_sources_cover_the_suite_its_updates_and_security() -> None:
    text = bundle_apt.sources_list("trixie", bundle_apt.DEBIAN_MIRROR, bundle_apt.DEBIAN_SECURITY)
    assert [line.split()[-2] for line in text.splitlines()] == ["trixie", "trixie-updates", "trixie-security"]
    assert all(f"signed-by={bundle_apt.DEBIAN_KEYRING}" in line for line in text.splitlines())


# --------------------------------------------------------------------------- progress

def test_progress_line_shows_count_bytes_and_rate() -> None:
    line = prog.format_status("files", 3, 9, 120 * 2**20, 12.0, "files")
    assert line == "files  3/9 files  120.0 MiB  10.0 MiB/s  12s"


def test_progress_summary_line_per_phase() -> None:
    assert prog.format_status("images", 7, 7, 0, 3.25, "images", final=True) == "[images] 7/7 images in 3.2 s"


def test_without_a_terminal_progress_prints_one_line_per_phase() -> None:
    out = io.StringIO()
    progress = prog.Progress(out, live=False)
    progress.start("files", 2, "files")
    progress.advance(items=1, nbytes=1024)
    progress.advance(items=1, nbytes=1024)
    progress.finish()
    assert out.getvalue().splitlines() == [out.getvalue().strip()]
    assert out.getvalue().startswith("[files] 2/2 files  2.0 KiB in ")


def test_on_a_terminal_progress_redraws_one_line() -> None:
    out = io.StringIO()
    progress = prog.Progress(out, live=True)
    progress.start("images", 1, "images")
    progress.advance(items=1)
    progress.finish()
    assert out.getvalue().count("\n") == 1 and "\r\033[K" in out.getvalue()


@pytest.mark.parametrize("n, text", [(512, "512 B"), (1536, "1.5 KiB"), (3 * 2**30, "3.0 GiB")])
def test_human_bytes(n: int, text: str) -> None:
    assert prog.human_bytes(n) == text


def test_a_verified_download_is_reused_from_the_cache_for_another_bundle(upstream: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert bundle_downloads.download(f"{upstream}/file", tmp_path / "one" / "x", SHA, "x", cache=cache) == "downloaded"
    assert bundle_downloads.download(f"{upstream}/file", tmp_path / "two" / "x", SHA, "x", cache=cache) == "cached"
    assert (tmp_path / "two" / "x").read_bytes() == PAYLOAD
    assert len(_Upstream.requests) == 1


def test_a_damaged_cache_entry_is_fetched_again(upstream: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / SHA[:2]).mkdir(parents=True)
    (cache / SHA[:2] / SHA).write_bytes(b"tampered")
    assert bundle_downloads.download(f"{upstream}/file", tmp_path / "x", SHA, "x", cache=cache) == "downloaded"
    assert (cache / SHA[:2] / SHA).read_bytes() == PAYLOAD


# ----------------------------------------------------------------------------- the release signature (real gpg)

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle_trust  # noqa: E402
from ansible_collections.airgap.kubernetes.tools import build_bundle as bb  # noqa: E402
from ansible_collections.airgap.kubernetes.tools import bundle_sign  # noqa: E402


@pytest.fixture
def release_key(tmp_path: Path):
    """A throwaway ed25519 release key in a GNUPGHOME under tmp_path (the site's key, kept off the bundle)."""
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key",
                    "site release <release@airgap.invalid>", "ed25519", "sign", "never"], check=True, capture_output=True)
    yield bundle_sign.signing_key("release@airgap.invalid", home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def _gpgv(keyring_asc: Path, signature: Path, data: Path, tmp_path: Path) -> str:
    """gpgv's VALIDSIG primary fingerprint, checked against the armored key file alone (as apt's signed-by does)."""
    ring = tmp_path / "ring.gpg"
    ring.write_bytes(bundle_trust.dearmor(keyring_asc.read_text(), str(keyring_asc)))
    out = subprocess.run(["gpgv", "--homedir", str(tmp_path / "g"), "--status-fd", "1", "--keyring", str(ring),
                          str(signature), str(data)], capture_output=True, text=True, check=True).stdout
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("[GNUPG:] VALIDSIG"))


def test_sign_key_resolves_to_the_primary_fingerprint(release_key) -> None:
    again = bundle_sign.signing_key(release_key.fingerprint.lower(), release_key.homedir)
    assert again.fingerprint == release_key.fingerprint and re.fullmatch(r"[0-9A-F]{40}", again.fingerprint)


def test_an_unknown_sign_key_fails_before_any_download_naming_the_fix(release_key, capsys) -> None:
    code = bb.main(["--sign-key", "nobody@airgap.invalid", "--sign-homedir", str(release_key.homedir),
                    "--out", str(release_key.homedir.parent / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--sign-key nobody@airgap.invalid: no secret key of that name in gpg's keyring in" in err
    assert "gpg --list-secret-keys" in err
    assert not (release_key.homedir.parent / "out").exists()


def test_the_apt_repo_is_signed_by_the_release_key_when_one_is_given(release_key, tmp_path: Path) -> None:
    bundle = tmp_path / "airgap-bundle"
    (bundle / "apt" / "pool" / "bookworm" / "main").mkdir(parents=True)
    bundle_apt.write_apt_repo(bundle, {"bookworm": ["amd64"]}, signer=release_key)
    dists = bundle / "apt" / "dists" / "bookworm"
    assert _gpgv(bundle / bundlefmt.APT_KEY, dists / "Release.gpg", dists / "Release", tmp_path) == \
        release_key.fingerprint
    clear = subprocess.run(["gpgv", "--homedir", str(tmp_path / "g"), "--keyring", str(tmp_path / "ring.gpg"),
                            str(dists / "InRelease")], capture_output=True, text=True)
    assert clear.returncode == 0, clear.stderr


def _phases(tmp_path: Path, key) -> bb._Build:
    bundle = tmp_path / "out" / bb.BUNDLE_NAME
    (bundle / "files" / "example.com").mkdir(parents=True)
    (bundle / "files" / "example.com" / "tool").write_bytes(b"\x7fELF tool")
    options = bb.Options(out=tmp_path / "out", arches=["amd64"], suites=[], sign_key=key)
    return bb._Build({}, {}, options, prog.Progress(live=False), tmp_path / "out", bundle, None, {})


def test_a_signed_build_ships_the_public_key_records_the_signer_and_signs_the_manifest(release_key, tmp_path) -> None:
    b = _phases(tmp_path, release_key)
    bb._release_key(b)
    manifest = bundlefmt.write_manifest(b.bundle, images={}, arches=["amd64"], signed_by=b.signer)
    bb._sign(b)
    assert manifest["signed_by"] == release_key.fingerprint
    assert bundlefmt.RELEASE_KEY in manifest["files"]
    assert bundle_trust.verify_signature(b.bundle, [release_key.fingerprint]) == release_key.fingerprint
    assert bundlefmt.verify_bundle(b.bundle) == []  # the signature is beside the manifest, not in it
    first = (b.bundle / bundlefmt.SIGNATURE).read_bytes()
    bb._sign(b)  # the same manifest keeps its signature: a rerun packs the same tarball
    assert (b.bundle / bundlefmt.SIGNATURE).read_bytes() == first
    b.options.sign_key = None
    bb._sign(b)
    assert not (b.bundle / bundlefmt.SIGNATURE).exists()


def test_the_bundles_collection_installs_with_the_defaults_link_and_its_defaults(tmp_path: Path) -> None:
    """roles/cluster_defaults/defaults/main is a link to group_vars/all: the collection in the bundle keeps it, so an
    installed collection (the bootstrap host's) has every default. The copy used to drop links, and layer 00 run from
    the installed collection stopped on the first setting it read ('etcd_allow_even_members' is undefined)."""
    import sys
    import tarfile
    from ansible_collections.airgap.kubernetes.tools import build_bundle
    tarball = build_bundle.build_collection(tmp_path / "bundle", tmp_path, {})
    with tarfile.open(tarball) as tar:
        link = tar.getmember("roles/cluster_defaults/defaults/main")
    assert link.issym() and link.linkname == "../../../group_vars/all"
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    subprocess.run([str(galaxy), "collection", "install", "--force", "-p", str(tmp_path / "installed"), str(tarball)],
                   check=True, capture_output=True)
    defaults = tmp_path / "installed/ansible_collections/airgap/kubernetes/roles/cluster_defaults/defaults/main"
    assert (defaults / "connection.yml").is_file() and "etcd_allow_even_members" in "".join(
        p.read_text() for p in defaults.glob("*.yml"))


def _members(tarball: Path) -> list:
    """The tarball's member names in their order, as GNU tar lists them."""
    return subprocess.run(["tar", "-tzf", str(tarball)], check=True, capture_output=True, text=True).stdout.split()


def test_the_tarball_leads_with_the_manifest_its_signature_and_the_release_key(release_key, tmp_path: Path) -> None:
    """A bundle host checks the signature from the tarball's head (tar --occurrence), before it unpacks anything."""
    b = _phases(tmp_path, release_key)
    bb._release_key(b)
    bundlefmt.write_manifest(b.bundle, images={}, arches=["amd64"], signed_by=b.signer)
    bb._sign(b)
    tarball = bb.make_tarball(b.bundle, b.out)
    members = _members(tarball)
    head = [f"{bb.BUNDLE_NAME}/{name}" for name in (bundlefmt.MANIFEST, bundlefmt.SIGNATURE, bundlefmt.RELEASE_KEY)]
    assert members[:3] == head, members
    # Every other entry once, the directory before what it holds: the tarball unpacks to the same tree as before.
    assert sorted(members) == sorted(set(members))
    assert members[3] == f"{bb.BUNDLE_NAME}/" and f"{bb.BUNDLE_NAME}/files/example.com/tool" in members
    scratch = tmp_path / "head"
    scratch.mkdir()
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(scratch), "--occurrence", *head], check=True)
    assert bundle_trust.verify_signature(scratch / bb.BUNDLE_NAME, [release_key.fingerprint]) == release_key.fingerprint


def test_an_unsigned_bundles_tarball_leads_with_its_manifest(tmp_path: Path) -> None:
    b = _phases(tmp_path, None)
    bundlefmt.write_manifest(b.bundle, images={}, arches=["amd64"])
    members = _members(bb.make_tarball(b.bundle, b.out))
    assert members[:2] == [f"{bb.BUNDLE_NAME}/{bundlefmt.MANIFEST}", f"{bb.BUNDLE_NAME}/"], members
    assert not (b.out / "bundle.tar.gz.members").exists()  # the list tar read is not left beside the tarball
