"""Serial benchmark: status-query transactions per second and latency, per driver, over ptys.

The simulators run in their own process (`kiboauto hil serve` with a generated rig of eight
devices per protocol, each on its own pty), the drivers in this one, as on a real rig. For each
protocol it measures:

* one device: sequential status queries, transactions/s and p50/p99 latency;
* eight devices at once: eight drivers querying concurrently, aggregate transactions/s and latency;
* a baseline in the same run: the same request bytes written and the reply read back with plain
  pyserial-asyncio-fast streams and no driver or transport (our overhead = driver / baseline).

    python bench/serial_bench.py [--seconds 3] [--repeat 3] [--json] [--protocols newera,cavro]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from kiboauto.clock import RealClock
from kiboauto.drivers.streams import open_serial_stream
from kiboauto.drivers.trace import ByteTrace
from kiboauto.station import open_station, station_from_hil_ports

PROTOCOLS = ("newera", "cavro", "modbus-tc")
DEVICES_PER_PROTOCOL = 8


def _rig() -> dict[str, Any]:
    devices: dict[str, Any] = {}
    for i in range(DEVICES_PER_PROTOCOL):
        devices[f"newera{i}"] = {"protocol": "newera", "options": {"address": i}}
        devices[f"cavro{i}"] = {"protocol": "cavro", "options": {"address": 1 + i}}
        devices[f"modbus-tc{i}"] = {"protocol": "modbus-tc", "options": {"unit": 1 + i}}
    return {"devices": devices}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {
        "tps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
        "n": len(latencies),
    }


async def _loop(query: Callable[[], Awaitable[Any]], seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        await query()
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - start


#: one status query per protocol, each a single request/reply transaction
QUERIES = {"newera": "is_moving", "cavro": "status", "modbus-tc": "read_temperature"}


def _query_of(protocol: str, device: Any) -> Callable[[], Awaitable[Any]]:
    query: Callable[[], Awaitable[Any]] = getattr(device, QUERIES[protocol])
    return query


def _tx_count(trace: ByteTrace, names: list[str]) -> int:
    wanted = set(names)
    return sum(1 for e in trace if e.direction == "tx" and e.device in wanted)


async def _baseline(port: str, request: bytes, reply_len: int, seconds: float) -> dict[str, float]:
    """Raw round trips: the request the driver sent, the reply read back by length."""
    stream = await open_serial_stream(port, baudrate=115200)
    try:

        async def once() -> None:
            await stream.write(request)
            got = 0
            while got < reply_len:
                got += len(await stream.read(reply_len - got))

        latencies, elapsed = await _loop(once, seconds)
        return _summary(latencies, elapsed)
    finally:
        await stream.close()


def start_hil() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`kiboauto hil serve` with the benchmark rig, in its own process; returns it and its ports."""
    rig_file = Path(tempfile.mkdtemp()) / "bench-rig.yaml"
    rig_file.write_text(yaml.safe_dump(_rig()), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiboauto", "hil", "serve", "--rig", str(rig_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


async def run(
    ports: dict[str, Any], seconds: float, protocols: tuple[str, ...] = PROTOCOLS
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for protocol in protocols:
        names = [f"{protocol}{i}" for i in range(DEVICES_PER_PROTOCOL)]
        subset = {n: ports[n] for n in names}
        trace = ByteTrace(limit=10_000_000)
        spec = station_from_hil_ports(subset)
        async with open_station(spec, RealClock(), trace=trace) as station:
            if station.failures:
                raise RuntimeError(f"cannot open: {station.failures}")
            first = station.devices[names[0]]
            query = _query_of(protocol, first)
            await query()
            before = _tx_count(trace, names)
            single_lat, single_t = await _loop(query, seconds)
            tx_per_query = (_tx_count(trace, names) - before) / len(single_lat)
            runs = await asyncio.gather(
                *(_loop(_query_of(protocol, station.devices[n]), seconds) for n in names)
            )
            all_lat = [x for lat, _ in runs for x in lat]
            eight = _summary(all_lat, max(t for _, t in runs))
            # The bytes of one query transaction, from the trace, for the baseline.
            entries = station.trace.entries(names[0])
            last_tx = max(i for i, e in enumerate(entries) if e.direction == "tx")
            request = entries[last_tx].data
            reply = b"".join(e.data for e in entries[last_tx + 1 :] if e.direction == "rx")
        base = await _baseline(ports[names[0]]["port"], request, len(reply), seconds)
        single = _summary(single_lat, single_t)
        results[protocol] = {
            "query": QUERIES[protocol],
            "transactions_per_query": tx_per_query,
            "request_bytes": len(request),
            "reply_bytes": len(reply),
            "one_device": single,
            "eight_devices": eight,
            "baseline_raw_pty": base,
            "ratio_driver_vs_raw": single["tps"] / base["tps"],
        }
    return results


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise median of several runs' numbers (machines here are noisy)."""
    first = runs[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = _median_of([r[key] for r in runs])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
        else:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs; figures are their medians")
    parser.add_argument("--json", action="store_true", help="print raw JSON")
    parser.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        help=f"comma-separated subset of {','.join(PROTOCOLS)}",
    )
    args = parser.parse_args()
    protocols = tuple(p for p in args.protocols.split(",") if p)
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        parser.error(f"unknown protocol(s) {sorted(unknown)}; known: {', '.join(PROTOCOLS)}")
    proc, ports = start_hil()
    try:
        runs = [asyncio.run(run(ports, args.seconds, protocols)) for _ in range(args.repeat)]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    results = _median_of(runs)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    py = platform.python_version()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {py}")
    print(f"medians of {args.repeat} runs of {args.seconds:g} s per measurement")
    header = (
        f"{'protocol':<10} {'query':<17} {'1 dev tps':>10} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'8 dev tps':>10} {'p50 ms':>7} {'p99 ms':>7} {'raw tps':>9} {'ratio':>6}"
    )
    print(header)
    for protocol, r in results.items():
        one, eight, base = r["one_device"], r["eight_devices"], r["baseline_raw_pty"]
        print(
            f"{protocol:<10} {r['query']:<17} {one['tps']:>10.0f} {one['p50_ms']:>7.2f} "
            f"{one['p99_ms']:>7.2f} {eight['tps']:>10.0f} {eight['p50_ms']:>7.2f} "
            f"{eight['p99_ms']:>7.2f} {base['tps']:>9.0f} {r['ratio_driver_vs_raw']:>6.2f}"
        )


if __name__ == "__main__":
    main()
