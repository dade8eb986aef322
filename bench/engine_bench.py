"""Engine benchmark: per-step overhead against Bluesky's RunEngine, the demo's time warp, and the
cost of an intent commit, each measured in this process.

(a) A protocol of ``--steps`` trivial steps (``wait: 0 s``) runs through the whole engine: state
    machine, executor, journal (step start and end rows, the cursor checkpoint after each step,
    group commits) on a real file. Beside it, Bluesky's ``RunEngine`` runs the same number of
    ``null`` messages (``pip install -e ".[bench]"``). Rounds alternate; medians are printed with
    the ratio Bluesky / kiboauto per step.
(b) The demo's run (protein-crystal example, simulated rig, virtual time, every image rendered,
    inspected and journaled): protocol time / wall time; the report is timed apart.
(c) The journal: a durable intent commit (fsynced) and a grouped step write.

    python bench/engine_bench.py [--steps 10000] [--rounds 5] [--dir DIR] [--no-demo]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kiboauto.clock import VirtualClock
from kiboauto.devices import ActionMarker
from kiboauto.engine.run import Run, RunOptions
from kiboauto.hil.camera_sim import SimCamera
from kiboauto.journal import Journal
from kiboauto.protocol.loader import load_text


def trivial_protocol(steps: int) -> str:
    lines = ["name: trivial", "roles: {camera: Camera}", "steps:"]
    lines += ["  - wait: 0 s"] * steps
    return "\n".join(lines) + "\n"


def kiboauto_per_step(text: str, steps: int, where: Path) -> float:
    loaded = load_text(text, "trivial.yaml")
    clock = VirtualClock()
    camera = SimCamera("camera", clock)

    async def main() -> float:
        run = Run(
            loaded.protocol,
            loaded.text,
            {"camera": camera},
            "bench",
            where,
            clock,
            RunOptions(control_socket=False),
        )
        t0 = time.perf_counter()
        outcome = await run.execute()
        elapsed = time.perf_counter() - t0
        run.close()
        assert outcome.state.value == "completed", outcome
        assert outcome.steps_run == steps, outcome
        return elapsed / steps

    return clock.run(main())


def bluesky_per_step(steps: int) -> float | None:
    try:
        from bluesky import RunEngine
        from bluesky.utils import Msg
    except ImportError:
        return None
    engine = RunEngine({}, call_returns_result=False)

    def plan() -> Any:
        for _ in range(steps):
            yield Msg("null")

    t0 = time.perf_counter()
    engine(plan())
    elapsed = time.perf_counter() - t0
    return elapsed / steps


def demo_warp(where: Path) -> tuple[float, float, float]:
    """The demo's run (protocol time, wall time) and then its report's wall time."""
    from importlib import resources

    from rich.console import Console

    from kiboauto.engine.report import render_report
    from kiboauto.run_cmd import RunRequest, demo_station, run_request

    console = Console(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    example = resources.files("kiboauto.examples").joinpath("protein-crystal.yaml")
    with resources.as_file(example) as path:
        request = RunRequest(protocol=path, run_dir=where, quiet=True, auto_crew=True)
        t0 = time.perf_counter()
        outcome, _ = run_request(request, console, station=demo_station(0))
        wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    render_report(where)
    report = time.perf_counter() - t0
    return outcome.protocol_time_s, wall, report


def journal_costs(where: Path, n: int = 300) -> tuple[float, float]:
    with Journal.open(where / "j.sqlite") as journal:
        journal.start_run("bench\n", "bench\n", t_wall=0.0)
        intents = []
        for i in range(n):
            marker = ActionMarker("p", "id", "dispense", 10.0, 100.0, {"n": i}, "e", i, 0.001)
            t0 = time.perf_counter()
            journal.record_intent("s", marker)
            intents.append(time.perf_counter() - t0)
        journal.group_commits()
        grouped = []
        for i in range(n * 10):
            t0 = time.perf_counter()
            row = journal.record_step_start(str(i), 1, 0.0, 0.0)
            journal.record_step_end(row, "ok", 0.0, 0.0)
            grouped.append(time.perf_counter() - t0)
    return statistics.median(intents), statistics.median(grouped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--no-demo", action="store_true")
    args = parser.parse_args()
    text = trivial_protocol(args.steps)
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for r in range(args.rounds):
            ours.append(kiboauto_per_step(text, args.steps, Path(tmp) / f"run{r}"))
            b = bluesky_per_step(args.steps)
            if b is not None:
                theirs.append(b)
            print(
                f"round {r + 1}: kiboauto {ours[-1] * 1e6:.1f} us/step"
                + (f", bluesky {theirs[-1] * 1e6:.1f} us/msg" if theirs else "")
            )
        k = statistics.median(ours)
        print(f"(a) kiboauto per step (journal on): median {k * 1e6:.1f} us over {args.rounds}")
        if theirs:
            b = statistics.median(theirs)
            print(f"    bluesky RunEngine per null msg: median {b * 1e6:.1f} us")
            ratios = [t / o for t, o in zip(theirs, ours, strict=True)]
            print(f"    ratio bluesky / kiboauto: median {statistics.median(ratios):.2f}x")
        else:
            print("    bluesky not installed: pip install -e '.[bench]'")
        if not args.no_demo:
            protocol, wall, report = demo_warp(Path(tmp) / "demo")
            print(
                f"(b) demo run: {protocol / 86400:.2f} d of protocol in {wall:.2f} s wall "
                f"(start-up, devices, every image rendered, inspected and journaled): time warp "
                f"{protocol / wall:,.0f}x; its report {report:.2f} s more"
            )
        intent, grouped = journal_costs(Path(tmp))
        print(
            f"(c) journal: intent commit (fsynced) median {intent * 1e6:.0f} us "
            f"({1 / intent:,.0f}/s); grouped step start+end {grouped * 1e6:.1f} us"
        )


if __name__ == "__main__":
    main()
