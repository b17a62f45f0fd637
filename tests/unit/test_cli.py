"""Specification of the options run.sh's commands share: -i, -e and --arch mean the same to every command."""
from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.tools import build_bundle, cli, options, progress, steps

REPO = Path(__file__).resolve().parents[2]
INVENTORY = "---\nall:\n  hosts:\n    node1: {}\n  children:\n    k8s_cluster:\n      hosts:\n        node1: {}\n"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The caller's directory: inv/hosts.yml, and site.yml both here and (a decoy) in inv/."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AIRGAP_INVENTORY", raising=False)
    (tmp_path / "inv").mkdir()
    (tmp_path / "inv" / "hosts.yml").write_text(INVENTORY)
    (tmp_path / "site.yml").write_text("crictl_enabled: false\n")
    (tmp_path / "inv" / "site.yml").write_text("nerdctl_enabled: false\n")
    return tmp_path.resolve()


def _names(capsys: pytest.CaptureFixture, argv: list) -> set:
    assert cli.main(argv) == 0
    return {entry["name"] for entry in json.loads(capsys.readouterr().out)}


def test_list_artifacts_reads_a_relative_extra_vars_file_from_the_callers_directory(site, capsys):
    names = _names(capsys, ["list-artifacts", "-i", "inv/hosts.yml", "-e", "@site.yml", "--format", "json"])
    assert "crictl" not in names and "nerdctl" in names


def test_build_bundle_reads_a_relative_extra_vars_file_from_the_callers_directory(site, monkeypatch):
    seen = {}

    def build(catalog, config, opts, progress=None):
        seen["config"] = config
        raise build_bundle.BuildError("stopped by the test")

    monkeypatch.setattr(build_bundle, "build", build)
    assert cli.main(["build-bundle", "-i", "inv/hosts.yml", "-e", "@site.yml", "--out", str(site / "out")]) == 2
    assert seen["config"]["crictl_enabled"] is False and seen["config"]["nerdctl_enabled"] is True


def test_deploy_cluster_hands_ansible_the_extra_vars_file_of_the_callers_directory(site, monkeypatch):
    seen = {}

    def execute(run, *args, **kwargs):
        seen["run"] = run
        return 0

    monkeypatch.setattr(steps, "execute", execute)
    assert cli.main(["deploy-cluster", "-i", "inv/hosts.yml", "-e", "@site.yml"]) == 0
    argv = steps.playbook_argv(seen["run"], "00-ssh", "ansible-playbook")
    assert argv[argv.index("-e") + 1] == f"@{site / 'site.yml'}"
    assert seen["run"].inventory == site / "inv" / "hosts.yml"


@pytest.mark.parametrize("command", ["list-artifacts", "build-bundle", "deploy-cluster"])
def test_a_missing_extra_vars_file_fails_every_command_alike_naming_the_callers_directory(site, capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "-i", "inv/hosts.yml", "-e", "@nowhere.yml"])
    assert exit_.value.code == 2
    assert f"extra vars file nowhere.yml does not exist in {site}" in capsys.readouterr().err


def test_the_default_inventory_is_the_environments_then_inventory_local(site, monkeypatch):
    local = site / "local" / "hosts.yml"
    monkeypatch.setattr(options, "DEFAULT_INVENTORY", local)
    assert options.inventory(None, required=False) is None
    with pytest.raises(options.OptionError, match="does not exist: pass -i PATH"):
        options.inventory(None)
    local.parent.mkdir()
    local.write_text(INVENTORY)
    assert options.inventory(None) == local
    monkeypatch.setenv("AIRGAP_INVENTORY", "inv/hosts.yml")
    assert options.inventory(None, required=False) == site / "inv" / "hosts.yml"
    assert options.inventory("inv") == site / "inv"


def test_a_named_inventory_that_does_not_exist_is_refused_even_where_defaults_would_do(site):
    with pytest.raises(options.OptionError, match="inventory nowhere.yml does not exist"):
        options.inventory("nowhere.yml", required=False)


def test_arch_all_is_every_catalog_arch_and_no_arch_is_the_inventorys_cluster_arches():
    catalog = cfg.load_defaults(REPO)["airgap_catalog"]
    assert options.arches(catalog, {}, "all") == list(catalog["arches"])
    assert options.arches(catalog, {}, "arm64") == ["arm64"]
    assert options.arches(catalog, {}, None) == ["amd64"]
    assert options.arches(catalog, {"cluster_arches": ["arm64"]}, None) == ["arm64"]


def test_help_lists_every_command_on_one_line():
    proc = subprocess.run([str(REPO / "run.sh"), "--help"], capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    for command in cli.COMMANDS:
        assert len([line for line in lines if line.split()[:1] == [command]]) == 1, command


# --------------------------------------------------------------------------- progress of slow phases

def test_a_silent_phase_says_every_interval_how_long_it_has_run_and_what_it_is_at():
    lines: list = []
    with progress.heartbeat("upstream build", lines.append, every=0.05, detail=lambda: "at pkg/a"):
        time.sleep(0.18)
    assert lines[0] == "upstream build ..."
    assert any(line.startswith("upstream build: 0 s so far, at pkg/a") for line in lines[1:-1])
    assert lines[-1] == "upstream build: done in 0 s"


def test_a_phase_that_speaks_gets_no_heartbeat_and_a_failed_one_says_so():
    lines: list = []
    with pytest.raises(RuntimeError):
        with progress.heartbeat("bundle", lines.append, every=60) as say:
            say("[files] 3/3 files in 0.1 s")
            raise RuntimeError("boom")
    assert lines == ["bundle ...", "[files] 3/3 files in 0.1 s", "bundle: failed after 0 s"]


def test_a_streamed_command_shows_its_stderr_as_it_comes_and_keeps_its_stdout():
    seen: list = []
    script = "echo one >&2; echo result; sleep 0.3; echo two >&2"
    started = time.monotonic()
    proc = progress.run_streaming(["sh", "-c", script], lambda line: seen.append((line, time.monotonic() - started)))
    assert proc.returncode == 0 and proc.stdout == "result\n" and proc.stderr == "one\ntwo"
    assert [line for line, _ in seen] == ["one", "two"] and seen[0][1] < 0.25


def test_one_step_phases_count_themselves_done():
    out = io.StringIO()
    lines = progress.Progress(out, live=False)
    with lines.phase("wheelhouse"):
        pass
    with lines.phase("files", 2, "files"):
        lines.advance(items=2)
    assert out.getvalue().splitlines()[0].startswith("[wheelhouse] 1/1 steps in ")
    assert out.getvalue().splitlines()[1].startswith("[files] 2/2 files in ")
    assert set(lines.timings) == {"wheelhouse", "files"}


def test_the_lab_upstream_relays_its_log_while_it_starts(tmp_path, monkeypatch):
    from ansible_collections.airgap.kubernetes.tools.lab import upstream

    fake = tmp_path / "fake_serve.py"
    fake.write_text("import sys, time, pathlib\nd = pathlib.Path(sys.argv[3])\n"
                    "print('upstream: building', file=sys.stderr, flush=True)\ntime.sleep(0.3)\n"
                    "print('upstream: built', flush=True)\n(d / 'ready').write_text(str(d / 'vars.yml'))\n"
                    "time.sleep(30)\n")
    monkeypatch.setattr(upstream, "__file__", str(fake))
    lines: list = []
    try:
        assert upstream.up(tmp_path / "w", log=lines.append) == tmp_path / "w" / "vars.yml"
    finally:
        upstream.down(tmp_path / "w")
    assert lines == ["upstream: building", "upstream: built"]
    assert not os.path.exists(tmp_path / "w" / "pid")
