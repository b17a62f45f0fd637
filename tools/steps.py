"""Step engine behind run.sh: plans, runs and records playbook steps so a failed run resumes."""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, TextIO

from ansible_collections.airgap.kubernetes.plugins.module_utils.digests import hash_tree

DEPLOY_STEPS = ("00-ssh", "01-bootstrap-os", "02-etcd", "03-control-plane", "04-network", "05-apps")

# Each command is an ordered list of steps; a step is a playbook under playbooks/.
COMMAND_STEPS: dict[str, tuple[str, ...]] = {
    "deploy-cluster": DEPLOY_STEPS,
    "add-node": ("scale-nodes",),
    "remove-node": ("remove-node",),
    "remove-cluster": ("remove-cluster",),
    "upgrade": ("upgrade",),
}

STATE_DIR_NAME = ".airgap"


def inventory_dir(inventory: Path) -> Path:
    return inventory if inventory.is_dir() else inventory.parent


class StepError(Exception):
    """A problem the operator must fix; the message says what and how."""


@dataclass
class StepRecord:
    status: str  # running | done | failed
    fingerprint: str
    started: str
    finished: str = ""
    seconds: float = 0.0
    log: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "StepRecord":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class PlannedStep:
    name: str
    run: bool
    reason: str


@dataclass
class Run:
    """One command on one inventory: the unit that the state file tracks and resumes."""

    command: str
    inventory: Path
    repo: Path
    targets: tuple[str, ...] = ()
    extra_vars: tuple[str, ...] = ()
    bundle_manifest: Optional[Path] = None
    steps: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.command not in COMMAND_STEPS:
            raise StepError(f"unknown command {self.command!r}: use one of {', '.join(COMMAND_STEPS)}")
        if not self.steps:
            self.steps = COMMAND_STEPS[self.command]

    @property
    def key(self) -> str:
        return self.command + (" " + ",".join(self.targets) if self.targets else "")

    @property
    def inventory_dir(self) -> Path:
        return inventory_dir(self.inventory)

    @property
    def state_dir(self) -> Path:
        return self.inventory_dir / STATE_DIR_NAME

    def playbook(self, step: str) -> Path:
        return self.repo / "playbooks" / f"{step}.yml"


def _hash_tree(digest: "hashlib._Hash", root: Path, label: str) -> None:
    """Feeds every file under root (sorted, state dir excluded) into digest."""
    hash_tree(digest, root, label, skip=(STATE_DIR_NAME, "__pycache__"))


def _extra_var_sources(extra_vars: Iterable[str], base: Path) -> list[tuple[str, bytes]]:
    """Returns (label, content) per extra var; @file arguments contribute the file's content."""
    sources = []
    for item in extra_vars:
        if item.startswith("@"):
            path = (base / item[1:]).resolve() if not os.path.isabs(item[1:]) else Path(item[1:])
            if not path.is_file():
                raise StepError(f"extra vars file {item[1:]} does not exist: fix the path after -e @")
            sources.append((f"file:{item}", path.read_bytes()))
        else:
            sources.append(("arg", item.encode()))
    return sources


def _manifest_content(path: Path) -> bytes:
    """The bundle manifest without its build time: a rebuilt bundle with the same content is the same input."""
    if not path.is_file():
        return b"absent"
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StepError(f"bundle manifest {path} is not JSON ({exc}): point --bundle at an unpacked bundle") from exc
    if isinstance(manifest, dict):
        manifest.pop("created", None)
    return json.dumps(manifest, sort_keys=True).encode()


def inputs_fingerprint(run: Run) -> str:
    """Fingerprint of what every step depends on: inventory, group_vars, extra vars, bundle manifest, plugins."""
    digest = hashlib.sha256()
    _hash_tree(digest, run.inventory_dir, "inventory")
    _hash_tree(digest, run.repo / "group_vars", "group_vars")
    for label, content in _extra_var_sources(run.extra_vars, Path.cwd()):
        digest.update(label.encode() + b"\0" + content + b"\0")
    if run.bundle_manifest is not None:
        digest.update(b"manifest:" + _manifest_content(run.bundle_manifest))
    digest.update(("targets:" + ",".join(run.targets)).encode())
    # Everything under plugins/ runs inside playbooks (the controller's own tools live in tools/, outside it).
    _hash_tree(digest, run.repo / "plugins", "plugins")
    return digest.hexdigest()


_ROLE_REF = re.compile(rb"airgap\.kubernetes\.([A-Za-z0-9_]+)")


def roles_of(run: Run, step: str) -> list[str]:
    """The collection's roles a step's playbook reaches, directly or through other roles, sorted."""
    found: set[str] = set()
    texts = [run.playbook(step).read_bytes()] if run.playbook(step).is_file() else []
    while texts:
        for name in {m.decode() for m in _ROLE_REF.findall(texts.pop())}:
            role = run.repo / "roles" / name
            if name in found or not role.is_dir():
                continue  # a plugin (airgap.kubernetes.artifact) or a role already seen
            found.add(name)
            texts.extend(p.read_bytes() for p in sorted(role.rglob("*.yml")) + sorted(role.rglob("*.j2")))
    return sorted(found)


def step_fingerprint(run: Run, step: str, inputs: str) -> str:
    """A step's fingerprint adds its own playbook and the roles it reaches (the plugins are in every input).

    An edited layer, or a new version of the collection that changes what a layer does, reruns from that layer."""
    digest = hashlib.sha256(inputs.encode())
    playbook = run.playbook(step)
    digest.update(playbook.read_bytes() if playbook.is_file() else b"absent")
    for name in roles_of(run, step):
        _hash_tree(digest, run.repo / "roles" / name, f"role:{name}")
    return digest.hexdigest()


def validate_step_name(run: Run, name: Optional[str], option: str) -> None:
    # Exact names only: a prefix or substring match would let 02-etcd select 02-etcd-events.
    if name is not None and name not in run.steps:
        raise StepError(f"{option} {name!r} is not a step of {run.command}: use one of {', '.join(run.steps)}")


def plan(run: Run, records: dict[str, StepRecord], fingerprints: dict[str, str],
         from_step: Optional[str] = None, only_step: Optional[str] = None) -> list[PlannedStep]:
    """Decides which steps run: from the first failed, unfinished or changed step to the end."""
    validate_step_name(run, from_step, "--from")
    validate_step_name(run, only_step, "--only")
    if from_step and only_step:
        raise StepError("--from and --only exclude each other: pass one")
    planned: list[PlannedStep] = []
    rerun_rest = False
    for name in run.steps:
        if only_step is not None:
            planned.append(PlannedStep(name, name == only_step, "--only" if name == only_step else "not selected"))
            continue
        if from_step is not None and name == from_step:
            rerun_rest = True
            planned.append(PlannedStep(name, True, "--from"))
            continue
        if rerun_rest:
            planned.append(PlannedStep(name, True, "an earlier step runs"))
            continue
        record = records.get(name)
        if from_step is not None:
            planned.append(PlannedStep(name, False, "before --from"))
        elif record is None:
            rerun_rest = True
            planned.append(PlannedStep(name, True, "not run yet"))
        elif record.status != "done":
            rerun_rest = True
            planned.append(PlannedStep(name, True, f"{record.status} last time"))
        elif record.fingerprint != fingerprints[name]:
            rerun_rest = True
            planned.append(PlannedStep(name, True, "inputs changed"))
        else:
            planned.append(PlannedStep(name, False, f"done {record.finished}, inputs unchanged"))
    return planned


def private_dir(path: Path) -> Path:
    """The state directory and what is under it (logs, facts, lock) are the operator's alone: 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _records(raw: object) -> dict[str, dict[str, StepRecord]]:
    """The runs of a step file's JSON; ValueError names the first part that is not shaped as save() writes it."""
    if not isinstance(raw, dict) or not isinstance(raw.get("runs", {}), dict):
        raise ValueError('it must be an object with "runs": {run: {step: record}}')
    required = {"status", "fingerprint", "started"}
    runs = {}
    for key, records in raw.get("runs", {}).items():
        if not isinstance(records, dict):
            raise ValueError(f"run {key!r} must map step names to records")
        for step, rec in records.items():
            if not isinstance(rec, dict) or not required <= set(rec) or \
                    not all(isinstance(rec[k], str) for k in required):
                raise ValueError(f"step {step!r} of run {key!r} needs a record with "
                                 f"{', '.join(sorted(required))} as strings")
        runs[key] = {step: StepRecord.from_dict(rec) for step, rec in records.items()}
    return runs


class StateFile:
    """JSON record of finished steps, per run key, next to the inventory: 0600, fsynced, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, StepRecord]]:
        if not self.path.exists():
            return {}
        fix = "delete it to start over (the next run starts from the first step)"
        try:
            raw = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise StepError(f"step file {self.path} is corrupt ({exc}): {fix}") from exc
        try:
            return _records(raw)
        except ValueError as exc:
            raise StepError(f"step file {self.path} is not a step file: {exc}; {fix}") from None

    def save(self, runs: dict[str, dict[str, StepRecord]]) -> None:
        private_dir(self.path.parent)
        data = {"version": 1, "runs": {key: {s: vars(r) for s, r in steps.items()} for key, steps in runs.items()}}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: a kill mid-write never leaves half a file
        _fsync_dir(self.path.parent)  # and a crash right after does not lose the rename

    def record(self, key: str, step: str, rec: StepRecord) -> None:
        runs = self.load()
        runs.setdefault(key, {})[step] = rec
        self.save(runs)

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()


class Lock:
    """Exclusive, non-blocking lock per inventory; the kernel drops it when the holder dies. A child given the
    lock's fd (pass_fds) holds it too: the lock outlives a killed run.sh until its ansible-playbook exits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def __enter__(self) -> "Lock":
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StepError(f"another run holds the lock on this inventory ({holder}); "
                            f"wait for it to finish (lock file {self.path})") from None
        self._fd = fd
        self._describe(f"pid {os.getpid()}, {' '.join(sys.argv[1:])[:200]}, since {_now()}")
        return self

    @property
    def fd(self) -> int:
        assert self._fd is not None, "the lock is not held"
        return self._fd

    def _describe(self, holder: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, holder.encode(), 0)

    def held_by_child(self, pid: int) -> None:
        """Names the child that shares the lock, so a run refused after run.sh died names what still runs."""
        self._describe(f"ansible-playbook pid {pid}, started by pid {os.getpid()} "
                       f"({' '.join(sys.argv[1:])[:200]}), since {_now()}")

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


class Style:
    """ANSI colours, only when writing to a terminal and NO_COLOR is unset."""

    def __init__(self, stream: TextIO) -> None:
        self.on = stream.isatty() and not os.environ.get("NO_COLOR")

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def ok(self, text: str) -> str:
        return self._wrap("32", text)

    def bad(self, text: str) -> str:
        return self._wrap("31;1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)


Executor = Callable[[list[str], Path, Path], int]


# What a signal to run.sh becomes for the playbook's process group. SIGHUP (the terminal went away) turns into
# SIGTERM: ansible-playbook stops its workers on SIGINT and SIGTERM, but dies at once on SIGHUP, and its workers,
# each in a session of its own, would run on.
FORWARDED_SIGNALS = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}


def run_logged(argv: list[str], cwd: Path, log_path: Path, out: TextIO = sys.stdout,
               env: Optional[dict[str, str]] = None, lock: Optional[Lock] = None) -> int:
    """Runs argv in a process group of its own, copying its output line by line to out and to log_path; returns
    the exit code. The child holds `lock` too, and SIGINT, SIGTERM and SIGHUP go to its whole group (as
    FORWARDED_SIGNALS maps them), so stopping run.sh stops the playbook, and killing run.sh leaves the lock held."""
    private_dir(log_path.parent)
    # Line-buffered: after a kill, the log ends with the task that was running, not one long finished.
    with open(log_path, "w", encoding="utf-8", buffering=1) as log:
        log.write(f"# {_now()} {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env, start_new_session=True,
                                pass_fds=(lock.fd,) if lock is not None else ())
        if lock is not None:
            lock.held_by_child(proc.pid)

        def forward(signum: int, _frame: object) -> None:
            try:
                os.killpg(proc.pid, FORWARDED_SIGNALS.get(signum, signum))
            except ProcessLookupError:
                pass

        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS} if main else {}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                log.write(line)
            return proc.wait()
        except BaseException:
            # The lock is released when this run leaves it: the playbook must not outlive that unlocked.
            forward(signal.SIGTERM, None)
            proc.wait()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def playbook_argv(run: Run, step: str, ansible_playbook: str) -> list[str]:
    argv = [ansible_playbook, "-i", str(run.inventory), str(run.playbook(step))]
    for item in run.extra_vars:
        # ansible-playbook runs in the checkout: an @file relative to where run.sh was called is made absolute,
        # the same file the fingerprint read.
        argv += ["-e", "@" + str(Path(item[1:]).resolve()) if item.startswith("@") else item]
    if run.targets:
        argv += ["-e", "airgap_target_nodes=" + ",".join(run.targets)]
    if run.command == "add-node":
        # Every layer runs on the new nodes alone; localhost for the plays that check the inventory.
        argv += ["--limit", ",".join(run.targets) + ",localhost"]
    if run.bundle_manifest is not None:
        # Layer 00 checks against it that the bundle carries what the inventory asks for, before any host changes.
        argv += ["-e", "airgap_bundle_manifest=" + str(run.bundle_manifest)]
    return argv


def ssh_control_dir(inventory: Path) -> Path:
    """Per-inventory SSH master sockets, short enough for the 108-byte socket path limit."""
    key = hashlib.sha256(str(inventory_dir(inventory).resolve()).encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "airgap-kubernetes" / "cp" / key


# AIRGAP_ANSIBLE_STRATEGY: "linear" (the default: ansible-core's own) or "mitogen" (Mitogen's linear strategy, from
# the pinned mitogen of requirements-runtime.txt). The playbooks are the same under both.
STRATEGIES = ("linear", "mitogen")


def strategy_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables for the strategy AIRGAP_ANSIBLE_STRATEGY asks for. Mitogen keeps one Python per host for a whole
    play instead of one per task: measured on the 5-node lab, a no-op rerun took 134-158 s instead of 185 s, and a
    fresh deploy no less time (its slow tasks are kubeadm and apt, not Ansible), so it stays a choice, not the
    default. Nothing when the caller set ANSIBLE_STRATEGY itself."""
    wanted = environ.get("AIRGAP_ANSIBLE_STRATEGY", "").strip() or "linear"
    if wanted not in STRATEGIES:
        raise StepError(f"AIRGAP_ANSIBLE_STRATEGY={wanted!r}: use one of {', '.join(STRATEGIES)}")
    if environ.get("ANSIBLE_STRATEGY") or wanted == "linear":
        return {}
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        raise StepError("AIRGAP_ANSIBLE_STRATEGY=mitogen, but ansible_mitogen is not installed next to this Python: "
                        "install the pinned mitogen (requirements-runtime.txt), or unset AIRGAP_ANSIBLE_STRATEGY")
    plugins = Path(list(spec.submodule_search_locations)[0]) / "plugins" / "strategy"
    known = environ.get("ANSIBLE_STRATEGY_PLUGINS", "")
    return {"ANSIBLE_STRATEGY": "mitogen_linear",
            "ANSIBLE_STRATEGY_PLUGINS": f"{plugins}:{known}" if known else str(plugins)}


def ansible_env(run: Run) -> dict[str, str]:
    # Facts and SSH masters are kept per inventory: two labs may both have a node1 at the same
    # address, and a master opened directly must not carry a session meant to go through a bastion.
    # PYTHONUNBUFFERED: ansible-playbook writes each line to the pipe as it happens, not in blocks.
    return {**os.environ, **strategy_env(dict(os.environ)), "PYTHONUNBUFFERED": "1",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(run.state_dir / "facts"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(ssh_control_dir(run.inventory))}


def missing_playbooks(run: Run, names: Iterable[str]) -> list[str]:
    return [n for n in names if not run.playbook(n).is_file()]


def execute(run: Run, from_step: Optional[str] = None, only_step: Optional[str] = None,
            ansible_playbook: str = "ansible-playbook", out: TextIO = sys.stdout,
            stop_at_missing: bool = False) -> int:
    """Runs the planned steps under the inventory lock; returns 0 when every step is done."""
    style = Style(out)
    state = StateFile(run.state_dir / "steps.json")
    env = ansible_env(run)
    with Lock(run.state_dir / "lock") as lock:
        inputs = inputs_fingerprint(run)
        fingerprints = {s: step_fingerprint(run, s, inputs) for s in run.steps}
        records = state.load().get(run.key, {})
        planned = plan(run, records, fingerprints, from_step, only_step)
        to_run = [p for p in planned if p.run]
        missing = missing_playbooks(run, [p.name for p in to_run])
        if missing and not stop_at_missing:
            raise StepError(f"{run.command} needs playbook(s) that do not exist yet in this version: "
                            + ", ".join(f"playbooks/{m}.yml" for m in missing))
        for p in planned:
            if not p.run:
                out.write(style.dim(f"== skip {p.name}: {p.reason}") + "\n")
        for p in to_run:
            if p.name in missing:
                out.write(style.bad(f"== stop at {p.name}: playbooks/{p.name}.yml does not exist yet; "
                                    f"not implemented: {', '.join(missing)}") + "\n")
                return 3
            started = _now()
            log_path = run.state_dir / "logs" / f"{p.name}.log"
            kept = _keep_failed_log(records.get(p.name), log_path)
            if kept:
                out.write(style.dim(f"== the log of the run that {records[p.name].status} there is kept: {kept}")
                          + "\n")
            state.record(run.key, p.name, StepRecord("running", fingerprints[p.name], started, log=str(log_path)))
            out.write(style.bold(f"== run {p.name} ({p.reason}); log {log_path}") + "\n")
            out.flush()
            t0 = time.monotonic()
            code = run_logged(playbook_argv(run, p.name, ansible_playbook), run.repo, log_path, out, env, lock)
            seconds = round(time.monotonic() - t0, 1)
            status = "done" if code == 0 else "failed"
            state.record(run.key, p.name, StepRecord(status, fingerprints[p.name], started, _now(), seconds,
                                                     str(log_path)))
            if code != 0:
                out.write(style.bad(f"== {p.name} failed after {seconds} s (exit {code}); log {log_path}. "
                                    f"Fix the cause and rerun the same command: it resumes at {p.name}.") + "\n")
                return code
            out.write(style.ok(f"== {p.name} done in {seconds} s") + "\n")
        if run.command == "remove-cluster":
            state.clear()
            out.write("== step file cleared: the next deploy-cluster starts from 00-ssh\n")
    return 0


def _keep_failed_log(record: Optional[StepRecord], log_path: Path) -> Optional[Path]:
    """A step that failed, or was killed while running, keeps its log as <step>.failed.log when it runs again."""
    if record is None or record.status not in ("failed", "running") or not log_path.is_file():
        return None
    kept = log_path.with_suffix(".failed.log")
    os.replace(log_path, kept)
    return kept


def describe(inventory: Path, out: TextIO = sys.stdout) -> None:
    """Prints every recorded run for the inventory: step, status, when, how long."""
    style = Style(out)
    runs = StateFile(inventory_dir(inventory) / STATE_DIR_NAME / "steps.json").load()
    if not runs:
        out.write(f"no steps recorded for {inventory}\n")
        return
    for key, records in runs.items():
        out.write(style.bold(key) + "\n")
        known = COMMAND_STEPS.get(key.split(" ")[0], ())
        for name in list(known) + [s for s in records if s not in known]:
            rec = records.get(name)
            if rec is None:
                out.write(f"  {name:<18} {style.dim('pending')}\n")
                continue
            colour = style.ok if rec.status == "done" else style.bad
            when = rec.finished or rec.started
            out.write(f"  {name:<18} {colour(rec.status):<8} {when}  {rec.seconds:>7.1f} s\n")
