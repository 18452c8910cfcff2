"""Run every benchmark, or the ones named: ``python -m bench [copy_in_place anonymize ...]``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    chosen = argv or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; have {', '.join(names)}", file=sys.stderr)
        return 2
    status = 0
    for name in chosen:
        print(f"\n=== bench: {name} ===", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        status |= module.main() or 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
