"""Makes this checkout importable as the collection `ansible_collections.airgap.kubernetes`."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / ".collections"


def _link_collection() -> None:
    link = COLLECTIONS / "ansible_collections" / "airgap" / "kubernetes"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        # Relative, so the link survives moving the checkout.
        os.symlink(os.path.relpath(REPO, link.parent), link)
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))


_link_collection()
