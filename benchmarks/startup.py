"""Start-up time of the light commands: `attnprof --version`, `--help`, `report` and `compare`.

Each command runs in a fresh interpreter, as a user types it. With `--against DIR` (a checkout of
another revision, e.g. `git worktree add /tmp/base main`), the same commands of that checkout run
in alternating turns with this one's, in the order flipped every round so neither side always goes
first, and the table shows the ratio of medians. The same interpreter and installed packages serve
both sides; only the attnprof source differs.

    python -m benchmarks.startup [--rounds 7] [--against DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PROFILE = "profiles/zoo-decoder.json"  # committed: the same file in every checkout
COMMANDS: dict[str, list[str]] = {
    "--version": ["--version"],
    "--help": ["--help"],
    "report": ["report", PROFILE],
    "compare": ["compare", PROFILE, PROFILE],
}


def run_once(checkout: Path, argv: list[str]) -> float:
    """Seconds from start to exit of `python -m attnprof ARGV` with `checkout` first on the path."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "attnprof", *argv], cwd=checkout, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: attnprof {' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--against", type=Path, help="another checkout, timed in alternating turns")
    args = parser.parse_args()
    sides = {"this": HERE} | ({"against": args.against.resolve()} if args.against else {})
    times: dict[tuple[str, str], list[float]] = {(side, name): [] for side in sides for name in COMMANDS}
    for round_index in range(args.rounds):
        for name, argv in COMMANDS.items():
            order = list(sides.items()) if round_index % 2 == 0 else list(reversed(sides.items()))
            for side, checkout in order:
                times[(side, name)].append(run_once(checkout, argv))
    if args.against:
        print("| command | against (median s) | this (median s) | against / this |")
        print("| --- | --- | --- | --- |")
    else:
        print("| command | median s | min s |")
        print("| --- | --- | --- |")
    for name in COMMANDS:
        this = statistics.median(times[("this", name)])
        if args.against:
            other = statistics.median(times[("against", name)])
            print(f"| `attnprof {name}` | {other:.2f} | {this:.2f} | {other / this:.1f}x |")
        else:
            print(f"| `attnprof {name}` | {this:.2f} | {min(times[('this', name)]):.2f} |")


if __name__ == "__main__":
    main()
