"""Benchmark: seconds for a 5-node lab (warm image cache) to run systemd and answer SSH, and to tear down."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / ".collections"))
from ansible_collections.airgap.kubernetes.tools.lab import lab  # noqa: E402


def main() -> int:
    """Brings a lab up, prints its timings, and always tears it down."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--release", default=lab.DEFAULT_RELEASE, choices=lab.RELEASES)
    p.add_argument("--internal", action="store_true")
    args = p.parse_args()
    name = f"bench{os.getpid()}"

    t0 = time.monotonic()
    image = lab.ensure_image(args.release)
    image_s = time.monotonic() - t0
    print(f"image {image}: ensured in {image_s:.2f} s (a cold build would take minutes)")
    the_lab = None
    try:
        t0 = time.monotonic()
        the_lab = lab.up(name, nodes=args.nodes, release=args.release, internal=args.internal)
        total = time.monotonic() - t0
    finally:
        rep = lab.down(name)
    t = the_lab.timings
    print(f"lab of {args.nodes} nodes + bundle host ({args.release}"
          f"{', internal' if args.internal else ''}):")
    print(f"  all systemd running : {t['systemd_running_seconds']:.2f} s after the first docker run")
    print(f"  all SSH answering   : {t['ssh_answering_seconds']:.2f} s after the first docker run")
    print(f"  up, end to end      : {total:.2f} s (network, key, containers, inventory)")
    print(f"  teardown            : {rep.seconds:.2f} s ({len(rep.containers)} containers, "
          f"{len(rep.volumes)} volumes, {len(rep.networks)} networks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
