"""The lab's Kubernetes v1.20.2 build: cached, and every binary reports the version it was built as."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "lab" / "build-kubernetes.sh"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubeadm",
            "kube-proxy", "kubectl")
VERSION_ARGS = {"kubectl": ("version", "--client", "--short"), "kubeadm": ("version", "-o", "short")}


@pytest.fixture(scope="module")
def build() -> Path:
    t0 = time.monotonic()
    # Cold, this compiles for about 12 minutes; the script is instant once its cache exists.
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, f"build-kubernetes.sh failed:\n{proc.stderr[-4000:]}"
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert (out / "REPORT").is_file(), f"{out} has no REPORT"
    print(f"\nbuild-kubernetes.sh took {time.monotonic() - t0:.1f} s (cache {out})")
    return out


def _version(path: Path) -> str:
    args = VERSION_ARGS.get(path.name, ("--version",))
    proc = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{path} {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


@pytest.mark.k8s_build
@pytest.mark.parametrize("binary", BINARIES)
def test_binary_reports_v1_20_2(build: Path, binary: str) -> None:
    version = _version(build / "bin" / binary)
    assert "v1.20.2" in version, f"{binary} reports {version!r}"


@pytest.mark.k8s_build
def test_pause_is_a_static_executable(build: Path) -> None:
    pause = build / "bin" / "pause"
    assert pause.is_file() and os.access(pause, os.X_OK)
    # The pause image holds nothing but this file, so it must not need a dynamic loader.
    assert b"ld-linux" not in pause.read_bytes()[:4096], f"{pause} is dynamically linked"


@pytest.mark.k8s_build
def test_report_names_each_binary_version_and_the_build_time(build: Path, capsys) -> None:
    report = (build / "REPORT").read_text()
    lines = report.splitlines()
    with capsys.disabled():
        print("\n--- lab Kubernetes build report ---")
        for line in lines:
            if not _is_checksum(line):
                print(line)
    assert any(ln.startswith("build_seconds ") for ln in lines)
    for b in BINARIES:
        line = next((ln for ln in lines if ln.startswith(f"{b} ")), "")
        assert "v1.20.2" in line, f"REPORT has no v1.20.2 line for {b}: {line!r}"


def _is_checksum(line: str) -> bool:
    head = line.split(" ", 1)[0]
    return len(head) == 64 and all(c in "0123456789abcdef" for c in head)
