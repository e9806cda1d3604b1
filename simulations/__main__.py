"""`python -m simulations [NAME…] [--seed N]`: run scenarios, print their reports (`make sim`)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Final

from simulations.scenario import DEFAULTS, simulate

GB: Final = 1024**3


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (MemAvailable), None where it
    does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__)
    parser.add_argument("names", nargs="*", default=["faults", "lossy"], choices=[*DEFAULTS, []])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # faults make nodes log; the report says it
    available = available_memory()
    for name in args.names:  # before any runs: a run short of memory would end in the OOM killer
        needed = DEFAULTS[name](args.seed).memory_needed()
        if available is not None and needed > available:
            print(
                f"python -m simulations: {name} needs about {needed / GB:.1f} GB of memory "
                f"(its nodes' stores on tmpfs included), this machine has {available / GB:.1f} "
                "GB available; run smaller scenarios (make sim SIM='faults lossy scale')",
                file=sys.stderr,
            )
            return 2
    failed = False
    for name in args.names:
        report = simulate(DEFAULTS[name](args.seed))
        print(f"== {name}")
        print(report.render(), flush=True)
        failed |= not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
