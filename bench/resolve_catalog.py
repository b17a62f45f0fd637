"""Benchmark: time to resolve the whole catalog (every line x arch x mode, lab overlay applied), median of N runs."""
import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".collections"))

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver  # noqa: E402

LAB_OVERLAY = REPO / "tests" / "unit" / "fixtures" / "resolver" / "lab-overlay-v1.20.2.yml"
TARGET_MS = 50.0


def resolve_everything(base: dict, overlay: dict) -> int:
    """Every component, enabled or not, so the figure covers the whole catalog; returns how many were resolved."""
    catalog = resolver.apply_overlays(base["airgap_catalog"], [overlay])
    count = 0
    for line in catalog["lines"]:
        config = {**base, "kube_version": line, "crictl_enabled": line != "1.20"}
        for arch in catalog["arches"]:
            for mode in resolver.MODES:
                for name in catalog["components"]:
                    if line == "1.20" and name == "crictl":
                        continue  # the lab line has no crictl (tests/unit/test_resolver.py says why)
                    resolver.resolve_one(catalog, config, name, arch, mode)
                    count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--runs", type=int, default=21)
    args = parser.parse_args()
    base = cfg.load_config(REPO, None)
    overlay = cfg.read_yaml(LAB_OVERLAY)
    times, count = [], 0
    for _ in range(args.runs):
        start = time.perf_counter()
        count = resolve_everything(base, overlay)
        times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    print(f"resolve whole catalog: {count} artifacts ({len(base['airgap_catalog']['lines'])} lines x 2 arches x 2 modes), "
          f"median {median:.1f} ms of {args.runs} runs (min {min(times):.1f}, max {max(times):.1f}); "
          f"target < {TARGET_MS:.0f} ms: {'met' if median < TARGET_MS else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
