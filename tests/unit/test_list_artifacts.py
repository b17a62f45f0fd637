"""Specification of `./run.sh list-artifacts` and of the catalog overlay writer the lab uses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.tools import catalog_overlay, list_artifacts, options
from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver
from ansible_collections.airgap.kubernetes.plugins.module_utils.digests import sha256_file

REPO = Path(__file__).resolve().parents[2]
LAB_INVENTORY = Path(__file__).parent / "fixtures" / "resolver" / "inventory" / "hosts.yml"


@pytest.fixture(autouse=True)
def no_site_inventory(monkeypatch):
    """The defaults, not whatever inventory the developer has in inventory/local."""
    monkeypatch.delenv("AIRGAP_INVENTORY", raising=False)
    monkeypatch.setattr(options, "DEFAULT_INVENTORY", Path("/nonexistent/inventory/local/hosts.yml"))


def run(capsys, *argv):
    code = list_artifacts.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys, *argv):
    code, out, err = run(capsys, "--format", "json", *argv)
    assert code == 0, err
    return json.loads(out)


def test_text_lists_files_images_and_packages_of_the_defaults(capsys):
    code, out, _ = run(capsys)
    kinds = {line.split()[0] for line in out.splitlines()}
    assert code == 0 and kinds == {"file", "image", "package"}
    assert "https://dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubelet" in out


def test_json_gives_the_resolved_fields(capsys):
    [kubelet] = [e for e in as_json(capsys, "--kind", "files") if e["name"] == "kubelet"]
    assert kubelet["sha256"] == "cf2562db46c48ab84cc3791540778ee7fb1a0a008529adbb434723dd02ed8b4b"
    assert kubelet["arches"] == ["amd64"]


@pytest.mark.parametrize("kind, singular", [("files", "file"), ("images", "image"), ("packages", "package")])
def test_kind_narrows_the_list(capsys, kind, singular):
    assert {e["kind"] for e in as_json(capsys, "--kind", kind)} == {singular}


def test_arch_all_lists_each_arch_of_a_file_and_a_multi_arch_image_once(capsys):
    entries = as_json(capsys, "--arch", "all", "--kind", "all")
    assert len([e for e in entries if e["name"] == "runc"]) == 2
    [pause] = [e for e in entries if e["name"] == "pause"]
    assert pause["arches"] == ["amd64", "arm64"]


def test_the_default_arches_are_the_inventorys_cluster_arches(capsys):
    entries = as_json(capsys, "--kind", "files", "-e", '{"cluster_arches": ["aarch64"]}')
    assert {a for e in entries for a in e["arches"]} == {"arm64"}


def test_offline_mode_prints_bundle_server_locations(capsys):
    entries = as_json(capsys, "--mode", "offline", "--kind", "images", "-e", "registry_host=mirror:5000")
    assert all(e["ref"].startswith("mirror:5000/") for e in entries)


def test_upstream_bases_move_what_the_builder_downloads(capsys):
    entries = as_json(capsys, "--kind", "files", "-e", '{"upstream_bases": {"dl.k8s.io": "http://lab:8080/dl.k8s.io"}}')
    [kubectl] = [e for e in entries if e["name"] == "kubectl"]
    assert kubectl["url"] == "http://lab:8080/dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubectl"


def test_os_family_narrows_packages(capsys):
    entries = as_json(capsys, "--kind", "packages", "--os-family", "redhat")
    assert {e["os_family"] for e in entries} == {"redhat"} and "conntrack-tools" in {e["package"] for e in entries}


def test_group_lists_only_what_that_group_needs(capsys):
    assert {e["name"] for e in as_json(capsys, "--group", "etcd", "--os-family", "debian")} == {
        "etcd", "chrony", "python3", "python3-apt", "python3-cryptography"}


def test_the_lab_inventory_lists_its_line_overlay_and_bridge_network(capsys):
    entries = as_json(capsys, "-i", str(LAB_INVENTORY), "--mode", "offline")
    by_name = {e["name"]: e for e in entries}
    assert by_name["kubelet"]["url"] == "https://lab-bundle:8443/files/dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubelet"
    assert by_name["pause"]["ref"] == "lab-bundle:5000/registry.k8s.io/pause:3.2"
    assert "containernetworking-plugins" in by_name and "crictl" not in by_name and "metrics-server" in by_name


def test_text_marks_multi_arch_images_and_shows_checksums(capsys):
    _, out, _ = run(capsys, "--kind", "all")
    assert any(line.split()[:4] == ["image", "pause", "3.10.2", "multi-arch"] for line in out.splitlines())
    assert "sha256:cf2562db46c48ab84cc3791540778ee7fb1a0a008529adbb434723dd02ed8b4b" in out


def test_an_empty_list_prints_nothing(capsys):
    assert run(capsys, "--group", "nobody") == (0, "", "")


def test_a_catalog_error_is_one_line_on_stderr_and_exit_2(capsys):
    code, out, err = run(capsys, "-e", "kube_version=v1.36.9")
    assert (code, out) == (2, "")
    assert err == ("list-artifacts: error: kube_version v1.36.9 has no sha256 for kubeadm/amd64 in the catalog: "
                   "add it (catalog_overlay_files), or pick one of v1.36.0..v1.36.4\n")


def test_an_unknown_cni_exits_2_listing_the_valid_ones(capsys):
    code, _, err = run(capsys, "-e", "kube_network_plugin=weave")
    assert code == 2 and "pick one of calico, cilium, flannel, bridge" in err


def test_a_config_without_the_catalog_is_reported(capsys):
    code, _, err = run(capsys, "-e", "airgap_catalog=none")
    assert code == 2 and "airgap_catalog is missing" in err


def test_markdown_is_the_catalogs_reference_table(capsys):
    code, out, _ = run(capsys, "--format", "markdown")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("| component | kind | groups | enabled when | k8s 1.36 |")
    assert "| `nodelocaldns` | image | k8s_cluster | dns_enabled; nodelocaldns_enabled |" in out
    assert "| `conntrack` | package | k8s_cluster | always |" in out


def test_the_environment_names_the_default_inventory(monkeypatch, capsys):
    monkeypatch.setenv("AIRGAP_INVENTORY", str(LAB_INVENTORY))
    assert options.inventory(None, required=False) == LAB_INVENTORY.resolve()
    code, out, _ = run(capsys, "--kind", "images")
    assert code == 0 and "registry.k8s.io/kube-apiserver:v1.20.2" in out


def test_it_runs_as_the_module_run_sh_invokes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / ".collections"), "AIRGAP_INVENTORY": str(LAB_INVENTORY)}
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.airgap.kubernetes.tools.list_artifacts",
                           "--kind", "images"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "registry.k8s.io/kube-apiserver:v1.20.2" in proc.stdout


# ----------------------------------------------------------------------------- catalog_overlay

@pytest.fixture
def build(tmp_path):
    out = tmp_path / "bin"
    out.mkdir()
    for name in ("kubelet", "kubeadm", "README"):
        (out / name).write_text(f"{name} built here\n")
    (tmp_path / "etcd.tar.gz").write_text("etcd tarball\n")
    return tmp_path


def test_the_overlay_writer_records_each_component_binary_of_a_directory(build, capsys):
    assert catalog_overlay.main([str(build / "bin"), "--version", "v1.20.2", "--arch", "x86_64",
                                 "--file", f"etcd@3.4.13={build / 'etcd.tar.gz'}", "-o", str(build / "o.yml")]) == 0
    overlay = cfg.read_yaml(build / "o.yml")
    assert sorted(overlay["components"]) == ["etcd", "kubeadm", "kubelet"]
    assert overlay["components"]["kubelet"]["sha256"]["amd64"]["1.20.2"] == sha256_file(build / "bin" / "kubelet")


def test_the_written_overlay_lets_the_lab_line_resolve(build):
    catalog_overlay.main([str(build / "bin"), "--version", "1.20.2", "--arch", "amd64", "-o", str(build / "o.yml")])
    config = cfg.load_config(REPO, None, {"catalog_overlay_files": ["o.yml"], "kube_version": "v1.20.2"})
    catalog = resolver.apply_overlays(config["airgap_catalog"], cfg.load_overlays(config, build))
    assert resolver.resolve_one(catalog, config, "kubelet", "amd64", "upstream").version == "1.20.2"


def test_the_overlay_writer_prints_to_stdout_by_default(build, capsys):
    assert catalog_overlay.main(["--arch", "arm64", "--file", f"etcd@3.4.13={build / 'etcd.tar.gz'}"]) == 0
    assert capsys.readouterr().out.startswith("---\n# Catalog overlay written by")


@pytest.mark.parametrize("argv, problem", [
    (["--arch", "amd64"], "nothing to write"),
    (["--arch", "s390x", "--file", "etcd@1=x"], "arch 's390x' is not supported"),
    (["DIR", "--arch", "amd64"], "needs --version"),
    (["/nonexistent", "--version", "1", "--arch", "amd64"], "is not a directory"),
    (["--arch", "amd64", "--file", "etcd=x"], "is not NAME@VERSION=PATH"),
    (["--arch", "amd64", "--file", "etcd@1=/nonexistent"], "does not exist"),
])
def test_the_overlay_writer_reports_bad_input_and_exits_2(capsys, argv, problem):
    assert catalog_overlay.main(argv) == 2
    assert problem in capsys.readouterr().err


def test_a_directory_with_no_component_binaries_is_reported(tmp_path, capsys):
    (tmp_path / "README").write_text("x")
    assert catalog_overlay.main([str(tmp_path), "--version", "1.20.2", "--arch", "amd64"]) == 2
    assert "holds no file named after a catalog component" in capsys.readouterr().err


def test_docs_catalog_md_holds_the_current_reference_table(capsys):
    run(capsys, "--format", "markdown")
    assert list_artifacts.markdown(list_artifacts.load(None)[0]) in (REPO / "docs" / "catalog.md").read_text()


PAUSE_3_10_1 = "sha256:278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c"


def test_text_shows_the_digest_of_a_pinned_image_and_marks_an_unpinned_one(capsys):
    _, out, _ = run(capsys, "--kind", "images", "-e", "kube_version=v1.35")
    rows = {line.split()[1]: line.split() for line in out.splitlines()}
    assert rows["pause"][4:] == ["registry.k8s.io/pause:3.10.1", PAUSE_3_10_1]
    assert rows["calico-node"][4:] == ["quay.io/calico/node:v3.31.7", "unpinned", "(tag", "only)"]


def test_json_gives_the_digest_and_a_reference_that_pulls_by_it(capsys):
    [pause] = [e for e in as_json(capsys, "--kind", "images", "-e", "kube_version=v1.35") if e["name"] == "pause"]
    assert pause["digest"] == PAUSE_3_10_1
    assert pause["ref"] == f"registry.k8s.io/pause:3.10.1@{PAUSE_3_10_1}"
    assert pause["canonical"] == "registry.k8s.io/pause:3.10.1"
