"""Specification of run.sh's step engine, exercised with real ansible-playbook runs on localhost."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.tools import steps

ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
REPO = Path(__file__).resolve().parents[2]

# Each playbook appends its own name to $TRACE and fails when $FAIL_STEP names it.
PLAYBOOK = textwrap.dedent("""\
    ---
    - name: Step {name}
      hosts: localhost
      gather_facts: false
      tasks:
        - name: Record that {name} ran
          ansible.builtin.shell: echo {name} >> "$TRACE"
          changed_when: true
        - name: Fail when asked to
          ansible.builtin.fail:
            msg: "{name} failed on request"
          when: lookup('ansible.builtin.env', 'FAIL_STEP') == '{name}'
    """)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A repo with its own playbooks and an inventory of localhost."""
    repo = tmp_path / "repo"
    (repo / "playbooks").mkdir(parents=True)
    (repo / "group_vars" / "all").mkdir(parents=True)
    (repo / "group_vars" / "all" / "main.yml").write_text("kube_version: v1.36.4\n")
    inventory = tmp_path / "inv" / "hosts.yml"
    inventory.parent.mkdir()
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         f"      ansible_python_interpreter: {sys.executable}\n")
    trace = tmp_path / "trace"
    monkeypatch.setenv("TRACE", str(trace))
    monkeypatch.setenv("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    monkeypatch.delenv("FAIL_STEP", raising=False)
    return repo, inventory, trace


def add_playbooks(repo: Path, *names: str) -> None:
    for name in names:
        (repo / "playbooks" / f"{name}.yml").write_text(PLAYBOOK.format(name=name))


def make_run(repo, inventory, names, command="deploy-cluster", **kw) -> steps.Run:
    return steps.Run(command=command, inventory=inventory, repo=repo, steps=tuple(names), **kw)


def execute(run, **kw) -> tuple[int, str]:
    out = io.StringIO()
    code = steps.execute(run, ansible_playbook=ANSIBLE_PLAYBOOK, out=out, **kw)
    return code, out.getvalue()


def deployed(repo, inventory, trace, names) -> steps.Run:
    """A run whose steps all finished once; the trace starts empty."""
    add_playbooks(repo, *names)
    run = make_run(repo, inventory, names)
    assert execute(run)[0] == 0
    ran(trace)
    return run


def ran(trace: Path) -> list[str]:
    lines = trace.read_text().split() if trace.exists() else []
    trace.unlink(missing_ok=True)
    return lines


def test_a_failed_step_resumes_there_and_skips_the_finished_ones(tree, monkeypatch):
    repo, inventory, trace = tree
    add_playbooks(repo, "a", "b", "c")
    run = make_run(repo, inventory, ["a", "b", "c"])
    monkeypatch.setenv("FAIL_STEP", "b")
    code, out = execute(run)
    assert code != 0 and ran(trace) == ["a", "b"]
    assert "resumes at b" in out
    monkeypatch.delenv("FAIL_STEP")
    code, out = execute(run)
    assert code == 0 and ran(trace) == ["b", "c"]
    assert "skip a" in out


def test_a_second_run_with_nothing_changed_runs_nothing(tree):
    repo, inventory, trace = tree
    add_playbooks(repo, "a", "b")
    run = make_run(repo, inventory, ["a", "b"])
    assert execute(run)[0] == 0 and ran(trace) == ["a", "b"]
    assert execute(run)[0] == 0 and ran(trace) == []


def test_a_changed_inventory_reruns_every_step(tree):
    repo, inventory, trace = tree
    run = deployed(repo, inventory, trace, ["a", "b"])
    (inventory.parent / "group_vars").mkdir()
    (inventory.parent / "group_vars" / "all.yml").write_text("etcd_version: 3.6.5\n")
    assert execute(run)[0] == 0 and ran(trace) == ["a", "b"]


def test_a_changed_layer_reruns_from_that_layer_on(tree):
    repo, inventory, trace = tree
    run = deployed(repo, inventory, trace, ["a", "b", "c"])
    with open(repo / "playbooks" / "b.yml", "a") as playbook:
        playbook.write("# edited\n")
    code, out = execute(run)
    assert code == 0 and ran(trace) == ["b", "c"]
    assert "run b (inputs changed)" in out


def _role(repo: Path, name: str, uses: str = "") -> Path:
    tasks = repo / "roles" / name / "tasks" / "main.yml"
    tasks.parent.mkdir(parents=True, exist_ok=True)
    tasks.write_text(f"---\n# {uses}\n- name: Nothing\n  ansible.builtin.meta: noop\n")
    return tasks


def test_edited_role_code_reruns_from_the_first_layer_that_reaches_it(tree):
    repo, inventory, trace = tree
    _role(repo, "base")
    inner = _role(repo, "inner")
    _role(repo, "outer", uses="include_role airgap.kubernetes.inner")
    run = deployed(repo, inventory, trace, ["a", "b", "c"])
    # b reaches outer by name, and inner through outer; a and c name only a plugin and another role.
    with open(repo / "playbooks" / "a.yml", "a") as playbook:
        playbook.write("# uses airgap.kubernetes.base and lookup('airgap.kubernetes.artifact')\n")
    with open(repo / "playbooks" / "b.yml", "a") as playbook:
        playbook.write("# role: airgap.kubernetes.outer\n")
    assert execute(run)[0] == 0 and ran(trace) == ["a", "b", "c"]
    assert steps.roles_of(run, "b") == ["inner", "outer"] and steps.roles_of(run, "a") == ["base"]

    inner.write_text(inner.read_text() + "# edited\n")
    code, out = execute(run)
    assert code == 0 and ran(trace) == ["b", "c"]
    assert "run b (inputs changed)" in out


def test_controller_tools_feed_no_fingerprint_but_every_plugin_does(tree):
    repo, inventory, trace = tree
    tools = repo / "tools"
    tools.mkdir()
    (tools / "steps.py").write_text("# engine\n")
    utils = repo / "plugins" / "module_utils"
    utils.mkdir(parents=True)
    (utils / "resolver.py").write_text("# resolver\n")
    run = deployed(repo, inventory, trace, ["a", "b"])
    (tools / "steps.py").write_text("# engine, edited\n")
    assert execute(run)[0] == 0 and ran(trace) == []
    (utils / "resolver.py").write_text("# resolver, edited\n")
    assert execute(run)[0] == 0 and ran(trace) == ["a", "b"]
    (utils / "new_helper.py").write_text("# a module_utils file no list names\n")
    assert execute(run)[0] == 0 and ran(trace) == ["a", "b"]


def test_changed_group_vars_or_extra_vars_change_the_fingerprint(tree):
    repo, inventory, _ = tree
    base = steps.inputs_fingerprint(make_run(repo, inventory, ["a"]))
    assert steps.inputs_fingerprint(make_run(repo, inventory, ["a"], extra_vars=("x=1",))) != base
    (repo / "group_vars" / "all" / "main.yml").write_text("kube_version: v1.36.3\n")
    assert steps.inputs_fingerprint(make_run(repo, inventory, ["a"])) != base


def test_a_changed_bundle_manifest_changes_the_fingerprint(tree, tmp_path):
    repo, inventory, _ = tree
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": {"a": "1"}}))
    before = steps.inputs_fingerprint(make_run(repo, inventory, ["a"], bundle_manifest=manifest))
    manifest.write_text(json.dumps({"files": {"a": "2"}}))
    assert steps.inputs_fingerprint(make_run(repo, inventory, ["a"], bundle_manifest=manifest)) != before


def test_an_extra_vars_file_relative_to_the_callers_directory_reaches_ansible_as_that_file(tree, tmp_path,
                                                                                          monkeypatch):
    repo, inventory, _ = tree
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "vars.yml").write_text("x: 1\n")
    monkeypatch.chdir(tmp_path / "site")
    run = make_run(repo, inventory, ["a"], extra_vars=("@vars.yml", "y=2"))
    steps.inputs_fingerprint(run)  # reads the same file, or names it
    argv = steps.playbook_argv(run, "a", "ansible-playbook")
    assert argv[-4:] == ["-e", f"@{tmp_path / 'site' / 'vars.yml'}", "-e", "y=2"]


def test_a_rebuilt_bundle_with_the_same_content_is_the_same_input(tree, tmp_path):
    repo, inventory, _ = tree
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"created": "2026-11-29T10:00:00Z", "files": {"a": "1"}}))
    before = steps.inputs_fingerprint(make_run(repo, inventory, ["a"], bundle_manifest=manifest))
    manifest.write_text(json.dumps({"files": {"a": "1"}, "created": "2026-11-29T11:00:00Z"}, indent=2))
    assert steps.inputs_fingerprint(make_run(repo, inventory, ["a"], bundle_manifest=manifest)) == before


def test_a_manifest_that_is_not_json_is_named(tree, tmp_path):
    repo, inventory, _ = tree
    manifest = tmp_path / "manifest.json"
    manifest.write_text("not json")
    with pytest.raises(steps.StepError, match=f"bundle manifest {manifest} is not JSON"):
        steps.inputs_fingerprint(make_run(repo, inventory, ["a"], bundle_manifest=manifest))


def test_the_state_directory_does_not_feed_the_fingerprint(tree):
    repo, inventory, _ = tree
    run = make_run(repo, inventory, ["a"])
    before = steps.inputs_fingerprint(run)
    (run.state_dir / "logs").mkdir(parents=True)
    (run.state_dir / "logs" / "a.log").write_text("noise")
    assert steps.inputs_fingerprint(run) == before


def test_an_interrupted_step_is_run_again(tree):
    repo, inventory, trace = tree
    run = deployed(repo, inventory, trace, ["a", "b"])
    # What a kill -9 during b leaves behind: b recorded as running.
    state = steps.StateFile(run.state_dir / "steps.json")
    rec = state.load()[run.key]["b"]
    state.record(run.key, "b", steps.StepRecord("running", rec.fingerprint, rec.started))
    assert execute(run)[0] == 0 and ran(trace) == ["b"]


def test_only_matches_the_exact_step_name(tree):
    repo, inventory, trace = tree
    add_playbooks(repo, "02-etcd", "02-etcd-events")
    run = make_run(repo, inventory, ["02-etcd", "02-etcd-events"])
    assert execute(run, only_step="02-etcd")[0] == 0
    assert ran(trace) == ["02-etcd"]
    assert execute(run, only_step="02-etcd-events")[0] == 0
    assert ran(trace) == ["02-etcd-events"]


def test_a_step_name_that_is_only_a_prefix_is_refused_with_the_valid_names(tree):
    repo, inventory, _ = tree
    run = make_run(repo, inventory, ["02-etcd", "02-etcd-events"])
    with pytest.raises(steps.StepError, match=r"--from '02-et' is not a step .*02-etcd, 02-etcd-events"):
        execute(run, from_step="02-et")


def test_from_reruns_that_step_and_all_after_it(tree):
    repo, inventory, trace = tree
    run = deployed(repo, inventory, trace, ["a", "b", "c"])
    assert execute(run, from_step="b")[0] == 0 and ran(trace) == ["b", "c"]


def test_a_second_concurrent_run_on_the_same_inventory_is_refused(tree):
    repo, inventory, _ = tree
    add_playbooks(repo, "a")
    run = make_run(repo, inventory, ["a"])
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO / '.collections')!r})
            from pathlib import Path
            from ansible_collections.airgap.kubernetes.tools import steps
            with steps.Lock(Path({str(run.state_dir / 'lock')!r})):
                print('locked', flush=True)
                time.sleep(30)
            """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(steps.StepError, match=rf"another run holds the lock .*pid {holder.pid}"):
            execute(run)
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock: no stale lock to clean by hand.
    assert execute(run)[0] == 0


# A step that holds: its command records its pid and sleeps, as a long task of a real playbook does.
HOLD_PLAYBOOK = textwrap.dedent("""\
    ---
    - name: Step hold
      hosts: localhost
      gather_facts: false
      tasks:
        - name: Hold
          ansible.builtin.shell: echo $$ > "$HOLD_PID.tmp" && mv "$HOLD_PID.tmp" "$HOLD_PID" && exec sleep 120
          changed_when: true
    """)


def _wait_for(predicate, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Running, not a zombie: a process whose parent died first waits for a reaper that may never come here."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def holding_run(tree, tmp_path):
    """(run, parent, pid of the held command): run.sh's step engine in a process of its own, its playbook busy."""
    repo, inventory, _ = tree
    (repo / "playbooks" / "hold.yml").write_text(HOLD_PLAYBOOK)
    run = make_run(repo, inventory, ["hold"])
    hold_pid = tmp_path / "hold.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / '.collections')!r})
        from pathlib import Path
        from ansible_collections.airgap.kubernetes.tools import steps
        run = steps.Run(command="deploy-cluster", inventory=Path({str(inventory)!r}), repo=Path({str(repo)!r}),
                        steps=("hold",))
        sys.exit(steps.execute(run, ansible_playbook={ANSIBLE_PLAYBOOK!r}))
        """)], env={**os.environ, "HOLD_PID": str(hold_pid)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = None
    try:
        _wait_for(hold_pid.exists, "the playbook's command to start")
        held = int(hold_pid.read_text())
        yield run, parent, held
    finally:
        parent.kill()
        parent.wait()
        holder = re.search(r"ansible-playbook pid (\d+)", (run.state_dir / "lock").read_text())
        for pid in ([held] if held else []):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if holder and _alive(int(holder[1])):
            os.killpg(int(holder[1]), signal.SIGKILL)


def test_a_killed_run_sh_leaves_the_lock_held_by_its_running_playbook(holding_run):
    run, parent, held = holding_run
    parent.kill()
    parent.wait()
    assert _alive(held)
    with pytest.raises(steps.StepError, match=r"another run holds the lock on this inventory \(ansible-playbook pid "
                                              rf"\d+, started by pid {parent.pid} "):
        with steps.Lock(run.state_dir / "lock"):
            pass
    # The lock goes with the last process that holds it: the playbook, once its command ends.
    os.kill(held, signal.SIGKILL)
    _wait_for(lambda: _lock_is_free(run), "the playbook to exit and release the lock")


def _lock_is_free(run) -> bool:
    try:
        with steps.Lock(run.state_dir / "lock"):
            return True
    except steps.StepError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_run_sh_stops_the_playbooks_whole_process_group_and_records_the_step_failed(holding_run, sig):
    run, parent, held = holding_run
    parent.send_signal(sig)
    _wait_for(lambda: not _alive(held), "the playbook's command to stop", seconds=15)
    assert parent.wait(timeout=30) != 0
    record = steps.StateFile(run.state_dir / "steps.json").load()[run.key]["hold"]
    assert record.status == "failed"


def test_remove_cluster_clears_the_step_file(tree):
    repo, inventory, _ = tree
    add_playbooks(repo, "a", "remove-cluster")
    execute(make_run(repo, inventory, ["a"]))
    state_file = inventory.parent / ".airgap" / "steps.json"
    assert "deploy-cluster" in json.loads(state_file.read_text())["runs"]
    assert execute(make_run(repo, inventory, ["remove-cluster"], command="remove-cluster"))[0] == 0
    assert not state_file.exists()


def test_a_failed_remove_cluster_keeps_the_step_file(tree, monkeypatch):
    repo, inventory, _ = tree
    add_playbooks(repo, "a", "remove-cluster")
    execute(make_run(repo, inventory, ["a"]))
    monkeypatch.setenv("FAIL_STEP", "remove-cluster")
    assert execute(make_run(repo, inventory, ["remove-cluster"], command="remove-cluster"))[0] != 0
    assert "deploy-cluster" in json.loads((inventory.parent / ".airgap" / "steps.json").read_text())["runs"]


def test_each_step_logs_to_its_own_file(tree):
    repo, inventory, _ = tree
    add_playbooks(repo, "a", "b")
    run = make_run(repo, inventory, ["a", "b"])
    execute(run)
    for name in ("a", "b"):
        log = (run.state_dir / "logs" / f"{name}.log").read_text()
        assert f"Record that {name} ran" in log
        assert f"Record that {'b' if name == 'a' else 'a'} ran" not in log


def test_a_missing_playbook_is_named_before_anything_runs(tree):
    repo, inventory, trace = tree
    add_playbooks(repo, "a")
    run = make_run(repo, inventory, ["a", "b"])
    with pytest.raises(steps.StepError, match=r"do not exist yet in this version: playbooks/b\.yml"):
        execute(run)
    assert ran(trace) == []


def test_stop_at_missing_runs_what_exists_and_names_the_rest(tree):
    repo, inventory, trace = tree
    add_playbooks(repo, "a")
    code, out = execute(make_run(repo, inventory, ["a", "b", "c"]), stop_at_missing=True)
    assert code == 3 and ran(trace) == ["a"]
    assert "not implemented: b, c" in out


def test_steps_shows_status_time_and_duration(tree, monkeypatch):
    repo, inventory, _ = tree
    add_playbooks(repo, "00-ssh", "01-bootstrap-os")
    monkeypatch.setenv("FAIL_STEP", "01-bootstrap-os")
    execute(make_run(repo, inventory, ["00-ssh", "01-bootstrap-os"]))
    out = io.StringIO()
    steps.describe(inventory, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "deploy-cluster"
    assert lines[1].split()[:2] == ["00-ssh", "done"] and lines[1].endswith(" s")
    assert lines[2].split()[:2] == ["01-bootstrap-os", "failed"]
    assert lines[3].split() == ["02-etcd", "pending"]


def test_output_has_no_colour_codes_when_not_on_a_terminal(tree):
    repo, inventory, _ = tree
    add_playbooks(repo, "a")
    _, out = execute(make_run(repo, inventory, ["a"]))
    assert "\033[" not in out


def test_a_corrupt_step_file_names_itself_and_the_fix(tree):
    repo, inventory, _ = tree
    run = make_run(repo, inventory, ["a"])
    run.state_dir.mkdir()
    (run.state_dir / "steps.json").write_text("{half")
    with pytest.raises(steps.StepError, match=r"steps\.json is corrupt .*delete it"):
        execute(run)


@pytest.mark.parametrize("content, problem", [
    ("[]", 'it must be an object with "runs"'),
    ('{"runs": []}', 'it must be an object with "runs"'),
    ('{"runs": {"deploy-cluster": ["a"]}}', "run 'deploy-cluster' must map step names to records"),
    ('{"runs": {"deploy-cluster": {"a": "done"}}}', "step 'a' of run 'deploy-cluster' needs a record with"),
    ('{"runs": {"deploy-cluster": {"a": {"status": "done"}}}}', "fingerprint, started, status as strings"),
])
def test_a_wrong_shaped_step_file_names_itself_the_problem_and_the_fix(tree, content, problem):
    repo, inventory, _ = tree
    run = make_run(repo, inventory, ["a"])
    run.state_dir.mkdir()
    (run.state_dir / "steps.json").write_text(content)
    with pytest.raises(steps.StepError) as error:
        execute(run)
    message = str(error.value)
    assert message.startswith(f"step file {run.state_dir / 'steps.json'} is not a step file: ") and problem in message
    assert message.endswith("delete it to start over (the next run starts from the first step)")


def test_the_step_file_is_0600_in_a_0700_directory_even_one_made_open_before(tree):
    repo, inventory, _ = tree
    add_playbooks(repo, "a")
    run = make_run(repo, inventory, ["a"])
    run.state_dir.mkdir(mode=0o755)
    os.chmod(run.state_dir, 0o755)
    assert execute(run)[0] == 0
    for path, mode in ((run.state_dir, 0o700), (run.state_dir / "steps.json", 0o600), (run.state_dir / "lock", 0o600),
                       (run.state_dir / "logs", 0o700)):
        assert oct(path.stat().st_mode & 0o777) == oct(mode), path
    assert not (run.state_dir / "steps.tmp").exists()


def test_a_resumed_step_keeps_the_log_of_the_run_that_failed(tree, monkeypatch):
    repo, inventory, _ = tree
    add_playbooks(repo, "a")
    run = make_run(repo, inventory, ["a"])
    monkeypatch.setenv("FAIL_STEP", "a")
    assert execute(run)[0] != 0
    monkeypatch.delenv("FAIL_STEP")
    code, out = execute(run)
    logs = run.state_dir / "logs"
    assert code == 0 and f"the log of the run that failed there is kept: {logs / 'a.failed.log'}" in out
    assert "a failed on request" in (logs / "a.failed.log").read_text()
    assert "a failed on request" not in (logs / "a.log").read_text()


def test_the_log_has_each_line_while_the_playbook_still_runs(holding_run):
    # What a kill leaves behind: the log names the task that was running.
    run, _, _ = holding_run
    assert "TASK [Hold]" in (run.state_dir / "logs" / "hold.log").read_text()


def test_an_unknown_command_lists_the_valid_ones(tree):
    repo, inventory, _ = tree
    with pytest.raises(steps.StepError, match="unknown command 'deploy': use one of deploy-cluster"):
        steps.Run(command="deploy", inventory=inventory, repo=repo)


def test_add_node_runs_are_recorded_apart_from_the_deploy(tree):
    repo, inventory, _ = tree
    add_playbooks(repo, "scale-nodes")
    run = make_run(repo, inventory, ["scale-nodes"], command="add-node", targets=("node5",))
    assert execute(run)[0] == 0
    assert set(json.loads((run.state_dir / "steps.json").read_text())["runs"]) == {"add-node node5"}


@pytest.mark.parametrize("args, message", [
    (["deploy-cluster", "-i", "/nonexistent/hosts.yml"], "inventory /nonexistent/hosts.yml does not exist"),
    (["add-node", "-i", "{inv}"], "add-node needs node names"),
    (["add-node", "node9", "-i", "{inv}"], "node9 not in inventory"),
    (["remove-cluster", "node1", "-i", "{inv}"], "remove-cluster takes no node names"),
])
def test_run_sh_refuses_bad_input_with_a_message_naming_it(tree, args, message):
    _, inventory, _ = tree
    proc = subprocess.run([str(REPO / "run.sh")] + [a.format(inv=inventory) for a in args],
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2
    assert message in proc.stderr
