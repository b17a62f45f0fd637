"""What a long run shows while it works: build-bundle's progress lines, and a heartbeat for the lab's slow phases."""
from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator, Optional, TextIO

# A phase that has said nothing for this long says that it still runs, and for how long.
HEARTBEAT_SECONDS = 30.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_status(phase: str, done: int, total: int, nbytes: int, elapsed: float, unit: str = "items",
                  final: bool = False) -> str:
    """One progress line: `files  3/9 items  120.5 MiB  10.0 MiB/s  12s`, or the phase's summary when final."""
    rate = f"  {human_bytes(nbytes / elapsed)}/s" if nbytes and elapsed > 0 else ""
    size = f"  {human_bytes(nbytes)}" if nbytes else ""
    if final:
        return f"[{phase}] {done}/{total} {unit}{size} in {elapsed:.1f} s"
    return f"{phase}  {done}/{total} {unit}{size}{rate}  {elapsed:.0f}s"


class Progress:
    """A live line on a terminal; otherwise one line per finished phase. Thread-safe."""

    def __init__(self, stream: Optional[TextIO] = None, live: Optional[bool] = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._lock = threading.Lock()
        self.current, self.unit, self.total, self.done, self.bytes = "", "items", 0, 0, 0
        self.started = self._drawn = 0.0
        self.timings: dict = {}

    def start(self, phase: str, total: int, unit: str = "items") -> None:
        with self._lock:
            self.current, self.unit, self.total, self.done, self.bytes = phase, unit, total, 0, 0
            self.started = time.monotonic()
        self._draw(force=True)

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.done += items
            self.bytes += nbytes
        self._draw()

    def finish(self) -> float:
        elapsed = time.monotonic() - self.started
        self.timings[self.current] = round(elapsed, 1)
        line = format_status(self.current, self.done, self.total, self.bytes, elapsed, self.unit, final=True)
        with self._lock:
            self.stream.write(("\r\033[K" if self.live else "") + line + "\n")
            self.stream.flush()
        return elapsed


    @contextlib.contextmanager
    def phase(self, name: str, total: Optional[int] = None, unit: str = "steps") -> Iterator["Progress"]:
        """start .. finish around one phase of a build; without a total the phase is one step, done when it ends.

        A failing phase prints no summary: its error does."""
        self.start(name, 1 if total is None else total, unit)
        yield self
        if total is None:
            self.advance(items=1)
        self.finish()

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._drawn < 0.2:
                return
            self._drawn = now
            line = format_status(self.current, self.done, self.total, self.bytes, now - self.started, self.unit)
            self.stream.write("\r\033[K" + line)
            self.stream.flush()



@contextlib.contextmanager
def heartbeat(name: str, log: Callable[[str], None], every: float = HEARTBEAT_SECONDS,
              detail: Callable[[], str] = lambda: "") -> Iterator[Callable[[str], None]]:
    """Logs `name ...` when a phase starts, `name: 90 s so far` whenever it has been silent for `every` seconds,
    and `name: done in 123 s` (or `failed after`) when it ends.

    Yields a log function for the phase's own lines: they count as signs of life, so a chatty phase gets no
    heartbeat between them. detail() may add what the phase is at (e.g. the package being built)."""
    started = time.monotonic()
    last = [started]
    lock = threading.Lock()
    stop = threading.Event()

    def say(line: str) -> None:
        with lock:
            last[0] = time.monotonic()
        log(line)

    def beat() -> None:
        while not stop.wait(max(0.0, last[0] + every - time.monotonic())):
            if time.monotonic() - last[0] >= every:
                extra = detail()
                say(f"{name}: {time.monotonic() - started:.0f} s so far" + (f", {extra}" if extra else ""))

    log(f"{name} ...")
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    ok = False
    try:
        yield say
        ok = True
    finally:
        stop.set()
        thread.join()
        log(f"{name}: {'done in' if ok else 'failed after'} {time.monotonic() - started:.0f} s")


def run_streaming(cmd: list, log: Callable[[str], None], **kw) -> subprocess.CompletedProcess:
    """Runs cmd and passes each line it writes to stderr to log as it comes (its progress, where a captured run
    would show nothing until the end). Returns its stdout, and its last 200 lines of stderr for an error message."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1, **kw)
    assert proc.stdout is not None and proc.stderr is not None
    out: list = []
    # stdout is read beside stderr: a full pipe on either side would stall the command.
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    tail: collections.deque = collections.deque(maxlen=200)
    for line in proc.stderr:
        tail.append(line.rstrip("\n"))
        log(line.rstrip("\n"))
    reader.join()
    return subprocess.CompletedProcess(cmd, proc.wait(), "".join(out), "\n".join(tail))
