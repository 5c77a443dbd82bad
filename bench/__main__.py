"""``make bench`` / ``python -m bench [NAME …]``: run the benchmarks, each in its own process.

Each prints its figures beside a reference measured in the same run, as a ratio; see
bench/README.md for what each measures and the last figures recorded.
"""

from __future__ import annotations

import subprocess
import sys

ALL = ("feeds", "mirrors", "render", "editions", "subscribers", "smtp", "workers")


def main(argv: list[str]) -> int:
    names = argv or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        failed += subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
