"""What durability costs: the measurement store's locked, fsynced append and the atomic JSON
write, side by side with a plain append and a plain write, in one process.

    python benchmarks/store_durability.py [--records 300]

Each record is a sweep measurement's size (~2 KB of JSON). The figure that matters is the cost
per record against the time one sweep point takes to measure (hundreds of milliseconds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from attnprof.store import append_jsonl, atomic_write_text

RECORD = {"config": {"batch_size": 4, "seq_len": 512}, "status": "ok", "samples": [1.2345678] * 200}


def plain_append(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def plain_write(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def per_record_ms(write: Callable[[Path, dict], None], folder: Path, records: int, name: str) -> float:
    path = folder / name
    start = time.perf_counter()
    for n in range(records):
        write(path, {**RECORD, "n": n})
    return (time.perf_counter() - start) / records * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as scratch:
        folder = Path(scratch)
        # Interleaved rounds, so that machine noise hits both sides alike.
        rows = {"append": [[], []], "write": [[], []]}
        for round_ in range(3):
            rows["append"][0].append(per_record_ms(plain_append, folder, args.records, f"plain{round_}.jsonl"))
            rows["append"][1].append(per_record_ms(append_jsonl, folder, args.records, f"store{round_}.jsonl"))
            rows["write"][0].append(per_record_ms(plain_write, folder, args.records, f"plain{round_}.json"))
            rows["write"][1].append(
                per_record_ms(
                    lambda p, r: atomic_write_text(p, json.dumps(r, indent=1)),
                    folder,
                    args.records,
                    f"atomic{round_}.json",
                )
            )
    print("| operation | plain (ms/record) | durable (ms/record) | ratio |")
    print("| --- | --- | --- | --- |")
    for name, label in [("append", "append one JSON line"), ("write", "write one JSON file")]:
        plain, durable = (sorted(values)[1] for values in rows[name])  # median of 3 rounds
        print(f"| {label} | {plain:.3f} | {durable:.3f} | {durable / plain:.1f}x |")


if __name__ == "__main__":
    main()
