"""`make bench`: runs every `bench_*.py` here (each has a `main()`), or the
ones named on the command line: `python -m tests.benchmarks forward`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    if not names:
        print("no benchmarks matched", file=sys.stderr)
        return 1
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        try:
            importlib.import_module(f"tests.benchmarks.{name}").main()
        except Exception as exc:  # report and go on to the next benchmark
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
