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


def pytest_terminal_summary(terminalreporter):
    """Says plainly, after every run that checked them, what the unit tests verify without running it."""
    ran = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
           if "test_kubeadm_config.py" in r.nodeid and "v1beta4" in r.nodeid]
    module = next((m for n, m in sys.modules.items() if n.endswith("test_kubeadm_config")), None)
    if ran and module is not None:
        terminalreporter.write_sep("-", "not run here")
        terminalreporter.write_line(module.NOT_RUN)
