"""sha256 of a file and of a directory tree: the one place the collection and its tools hash content."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Union

_CHUNK = 1 << 20


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (bundles hold files of hundreds of MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(digest: Any, root: Path, label: str, skip: Iterable[str] = ("__pycache__",)) -> None:
    """Feeds every file under root (or root itself, when a file) into digest: its path, then its sha256.

    Sorted, so the result does not depend on the file system's order; a path with a part in skip is left out,
    and a missing root counts as `<label>:absent`.
    """
    root = Path(root)
    if not root.exists():
        digest.update(f"{label}:absent\n".encode())
        return
    skipped = set(skip)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        rel = path.relative_to(root.parent if root.is_file() else root)
        if skipped.intersection(rel.parts):
            continue
        digest.update(f"{label}:{rel}:".encode())
        digest.update(bytes.fromhex(sha256_file(path)))
