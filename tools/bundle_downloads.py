"""build-bundle's downloads: resumable, verified against the catalog's sha256, parallel, cached by content."""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from ansible_collections.airgap.kubernetes.plugins.module_utils.digests import sha256_file
from ansible_collections.airgap.kubernetes.tools.bundle_common import BuildError, ChecksumError
from ansible_collections.airgap.kubernetes.tools.bundle_plan import FileJob
from ansible_collections.airgap.kubernetes.tools.progress import Progress

CHUNK = 1 << 20
USER_AGENT = "airgap.kubernetes-build-bundle"


class _Incomplete(OSError):
    """The server closed the connection before Content-Length bytes arrived; the retry continues the .part file."""


def _fetch(url: str, part: Path, timeout: float, on_bytes: Callable[[int], None]) -> bool:
    """Fetch url into part, continuing it with an HTTP Range request when it exists; returns True if it resumed."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return True  # nothing left to fetch; the checksum decides whether the part is whole
        raise
    with response:
        resumed = bool(have) and response.status == 206
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        got = 0
        # A server that ignores Range answers 200 with the whole file: start over.
        with open(part, "ab" if resumed else "wb") as out:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                got += len(chunk)
                on_bytes(len(chunk))
        if expected is not None and got < expected:
            raise _Incomplete(f"connection closed after {got} of {expected} bytes")
    return resumed


def _from_cache(cache: Optional[Path], sha256: str, dest: Path) -> bool:
    """Copy a verified earlier download of the same content to dest; a damaged cache entry is dropped."""
    entry = cache / sha256[:2] / sha256 if cache else None
    if entry is None or not entry.is_file():
        return False
    if sha256_file(entry) != sha256:
        entry.unlink()
        return False
    tmp = dest.with_name(dest.name + ".cache")
    shutil.copyfile(entry, tmp)
    tmp.replace(dest)
    return True


def _to_cache(cache: Optional[Path], sha256: str, src: Path) -> None:
    if cache:
        entry = cache / sha256[:2] / sha256
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{sha256}.{os.getpid()}.{threading.get_ident()}")
        shutil.copyfile(src, tmp)
        tmp.replace(entry)


def download(url: str, dest: Path, sha256: str, name: str, retries: int = 4, timeout: float = 60,
             on_bytes: Callable[[int], None] = lambda n: None, backoff: float = 1.0,
             cache: Optional[Path] = None) -> str:
    """Download url to dest and check its sha256; returns 'present', 'cached', 'downloaded' or 'resumed'.

    A verified dest is kept as it is, and content already verified once is copied from cache (keyed by sha256).
    A dest.part left by an interrupted attempt (this run or an earlier one) is continued with an HTTP Range
    request. Network errors are retried; a checksum mismatch is not.
    """
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _from_cache(cache, sha256, dest):
        return "cached"
    part = dest.with_name(dest.name + ".part")
    resumed = part.exists() and part.stat().st_size > 0
    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout, on_bytes)
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise BuildError(f"{name}: {url} answered {exc.code} {exc.reason}: check that this version exists "
                                 "there, or point upstream_bases at a mirror that has it") from None
            error: Exception = exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            error = exc
        attempt += 1
        if attempt > retries:
            raise BuildError(f"{name}: downloading {url} failed {attempt} times (last: {error}): check the network "
                             f"or upstream_bases, then rerun; it continues from {part}") from None
        time.sleep(backoff * 2 ** (attempt - 1))
    got = sha256_file(part)
    if got != sha256:
        part.unlink()
        raise ChecksumError(checksum_message(name, url, sha256, got))
    part.replace(dest)
    _to_cache(cache, sha256, dest)
    return "resumed" if resumed else "downloaded"


def checksum_message(name: str, url: str, expected: str, got: str) -> str:
    return (f"{name}: {url} has sha256 {got}, the catalog expects {expected}: the download was damaged or the "
            "upstream file changed; rerun to download it again, and if it persists, check the upstream and fix "
            "the checksum with a catalog overlay (catalog_overlay_files)")


def parallel(fn: Callable, jobs: list, progress: Progress, workers: int) -> list:
    """fn(job) for every job on a thread pool, a progress item each; returns the results in job order.

    Every failure is collected and raised together, so one run shows all that is wrong.
    """
    results: dict = {}
    errors: list = []
    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(fn, job): index for index, job in enumerate(jobs)}
        for future in cf.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except BuildError as exc:
                errors.append(str(exc))
            progress.advance(items=1)
    if errors:
        raise BuildError("\n".join(sorted(errors)))
    return [results[i] for i in range(len(jobs))]


def download_all(jobs: list, root: Path, progress: Progress, workers: int = 4, retries: int = 4,
                 cache: Optional[Path] = None) -> dict:
    """Every job in parallel into root/<job.path>; returns {path: status}. All failures are reported together."""
    def one(job: FileJob) -> str:
        return download(job.url, root / job.path, job.sha256, job.name, retries,
                        on_bytes=lambda n: progress.advance(nbytes=n), cache=cache)
    return dict(zip((job.path for job in jobs), parallel(one, jobs, progress, workers)))


def prune(directory: Path, keep: set, root: Path) -> list:
    """Remove files under directory that are not in keep (bundle-relative paths), and emptied directories."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.rglob("*"), reverse=True):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif rel not in keep:
            path.unlink()
            removed.append(rel)
    return removed
