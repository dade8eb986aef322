"""Journal benchmark: durable intent commits/s and telemetry rows/s on a real file.

Intents are committed one by one with ``synchronous=FULL`` (one WAL fsync each: this is the cost
of "intent before action"); telemetry is written in batches in one ``synchronous=NORMAL``
transaction each. Each call runs on the caller's thread, as the engine runs it on its event loop,
so the latency printed is how long one call holds the loop.

    python bench/journal_bench.py [--dir DIR] [--seconds 2] [--batch 100]

``--dir`` chooses the file system (the default temporary directory may be a tmpfs, where fsync
costs nothing: measure on the disk the runs will live on).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from kiboauto.devices import ActionMarker
from kiboauto.journal import Journal, TelemetryRow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, Journal.open(Path(tmp)) as journal:
        journal.start_run("bench\n", "bench\n", t_wall=0.0)
        latencies: list[float] = []
        end = time.perf_counter() + args.seconds
        n = 0
        while time.perf_counter() < end:
            marker = ActionMarker(
                "pump1", "NE1000", "dispense", 10.0, 100.0, {"infused": n}, "e", n, 0.001
            )
            t0 = time.perf_counter()
            action_id = journal.record_intent("bench", marker)
            latencies.append(time.perf_counter() - t0)
            journal.end_action(action_id, {"delivered_ul": 10.0})
            n += 1
        latencies.sort()
        p50 = statistics.median(latencies) * 1e3
        p99 = latencies[int(len(latencies) * 0.99)] * 1e3
        rate = len(latencies) / sum(latencies)
        floor = _bare_commits(Path(tmp) / "floor.sqlite", args.seconds)
        print(f"intent commits: {rate:8.0f}/s  p50 {p50:.3f} ms  p99 {p99:.3f} ms  ({tmp})")
        print(
            f"bare sqlite3 commits (same file system, WAL, synchronous=FULL): {floor:8.0f}/s  "
            f"ratio journal/bare {rate / floor:.2f}"
        )

        rows = 0
        spent = 0.0
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            batch = [
                TelemetryRow("tc1", "temperature", 20.0 + i * 1e-3, "degC", "OK", float(rows + i))
                for i in range(args.batch)
            ]
            t0 = time.perf_counter()
            rows += journal.record_telemetry(batch)
            spent += time.perf_counter() - t0
        per_batch = spent / (rows / args.batch) * 1e3
        print(
            f"telemetry rows: {rows / spent:8.0f}/s  "
            f"({args.batch} rows per transaction, {per_batch:.3f} ms per batch)"
        )


def _bare_commits(path: Path, seconds: float) -> float:
    """The floor: one small row inserted and committed with the same pragmas, nothing else."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, marker TEXT)")
        spent, n = 0.0, 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO t (marker) VALUES (?)", ('{"device": "pump1"}',))
            db.execute("COMMIT")
            spent += time.perf_counter() - t0
            n += 1
        return n / spent
    finally:
        db.close()


if __name__ == "__main__":
    main()
