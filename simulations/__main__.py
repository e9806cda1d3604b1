"""`python -m simulations [NAME…] [--seed N]`: run scenarios, print their reports (`make sim`)."""

from __future__ import annotations

import argparse
import logging
import sys

from simulations.scenario import DEFAULTS, simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__)
    parser.add_argument("names", nargs="*", default=["faults", "lossy"], choices=[*DEFAULTS, []])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # faults make nodes log; the report says it
    failed = False
    for name in args.names:
        report = simulate(DEFAULTS[name](args.seed))
        print(f"== {name}")
        print(report.render(), flush=True)
        failed |= not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
