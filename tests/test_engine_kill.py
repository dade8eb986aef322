"""The engine kill test: ``kiboauto run`` SIGKILLed at 50 instants of one run, resumed each time.

``kiboauto hil serve`` runs a New Era pump and a Cavro pump with its valve in its own process, on
ptys, with physics ``SPEED`` times faster than real time, as a bench rig would. The engine runs a
small protocol against it as a subprocess (``kiboauto run PROTOCOL --station FILE --speed SPEED``)
and is killed with SIGKILL at a random instant; ``kiboauto resume RUN_DIR`` takes over at once and
is killed in turn, 50 times along the same run, then left to finish. The instants are seeded and
biased to the dispense windows: most kills wait until a pump really moves (ground truth from the
server's control port) and land a moment later, some land in the process's start-up (imports,
opening the ports, reconciling), the rest anywhere once the run is going.

At the end the simulators' ground truth (``kiboauto hil truth``: volume moved since power-on,
which no host command can clear) must show exactly the volumes of the plan, to one pump step; the
journal's last transition must be ``completed``; every step key must have at most one 'ok' row.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hil_control import ground_truth

from kiboauto.journal import JOURNAL_NAME

KIBOAUTO = [sys.executable, "-m", "kiboauto"]
SPEED = 8.0  # protocol seconds per wall second: the uninterrupted run takes ~68 s of wall time
PLANNED_S = 540.0  # protocol seconds of the run: five 100 s moves and two 20 s waits
KILLS = 50
SEED = 20260406

RIG = {
    "devices": {
        "pump1": {"protocol": "newera", "options": {"address": 0}},
        "valve1": {"protocol": "cavro", "options": {"address": 1}},
    }
}

# Initialise the Cavro, fill its syringe from port 1, then two dispenses on each pump with waits
# between them. Each move takes 100 s of protocol time (~8 s of wall time at SPEED).
PROTOCOL = """\
name: kill_protocol
roles:
  pump: {kind: SyringePump, device: pump1, syringe: 1 mL}
  syringe: {kind: SyringePump, device: valve1, syringe: 250 uL}
  valve: {kind: Valve, device: valve1}
steps:
  - id: init
    initialize: {device: valve}
  - id: port_in
    select_port: {valve: valve, port: 1}
  - id: fill
    withdraw: {pump: syringe, volume: 200 uL, rate: 120 uL/min}
  - id: port_out
    select_port: {valve: valve, port: 2}
  - id: d1
    dispense: {pump: pump, volume: 40 uL, rate: 24 uL/min}
  - id: w1
    wait: 20 s
  - id: c1
    dispense: {pump: syringe, volume: 100 uL, rate: 60 uL/min}
  - id: w2
    wait: 20 s
  - id: d2
    dispense: {pump: pump, volume: 40 uL, rate: 24 uL/min}
  - id: port_out2
    select_port: {valve: valve, port: 3}
  - id: c2
    dispense: {pump: syringe, volume: 100 uL, rate: 60 uL/min}
"""
STEPS = ["init", "port_in", "fill", "port_out", "d1", "w1", "c1", "w2", "d2", "port_out2", "c2"]
PLAN = {  # (device, truth key) -> uL
    ("pump1", "infused_ul"): 80.0,
    ("valve1", "aspirated_ul"): 200.0,
    ("valve1", "dispensed_ul"): 200.0,
}
MOVING = {"infusing", "withdrawing", "plunger"}


def _truth(control: str) -> dict[str, Any]:
    host, _, port = control.rpartition(":")
    return ground_truth(host, int(port))


def _moving(truth: dict[str, Any]) -> list[str]:
    return [name for name in ("pump1", "valve1") if truth[name]["motion"] in MOVING]


class JournalReader:
    """Reads the run's journal while the engine writes it (SQLite WAL: readers never block)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / JOURNAL_NAME

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        except sqlite3.OperationalError:
            return []
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the schema is not there yet
            return []
        finally:
            conn.close()

    def ups(self) -> int:
        """How many processes got as far as starting or recovering the run."""
        rows = self.query("SELECT count(*) FROM transitions WHERE trigger IN ('start', 'recover')")
        return int(rows[0][0]) if rows else 0

    def open_intents(self) -> list[str]:
        return [r[0] for r in self.query("SELECT step FROM actions WHERE state = 'open'")]

    def running_step(self) -> str | None:
        rows = self.query("SELECT step FROM steps WHERE outcome IS NULL ORDER BY id DESC LIMIT 1")
        return str(rows[0][0]) if rows else None


@dataclass
class Kill:
    mode: str  # "start-up" | "dispense" | "anywhere"
    after_s: float  # from spawn to kill
    up: bool  # the process had started or recovered the run
    forced: bool  # killed at the deadline of its share of the run, before what it waited for
    moving: list[str]  # pumps moving (ground truth) just before the kill
    open_intents: list[str]  # steps with an intent and no end just after the kill
    step: str | None  # the step the journal shows running after the kill


@pytest.fixture
def hil(tmp_path: Path) -> Any:
    rig = tmp_path / "rig.yaml"
    rig.write_text(yaml.safe_dump(RIG), encoding="utf-8")
    station = tmp_path / "station.yaml"
    out = ["--station-out", str(station)]
    proc = subprocess.Popen(
        [*KIBOAUTO, "hil", "serve", "--rig", str(rig), "--speed", str(SPEED), *out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate(timeout=10)[1]
    ports = json.loads(line)
    try:
        yield station, ports["_control"]["port"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-4000:]


def _engine(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        err.write(f"--- {' '.join(args)}\n".encode())
        return subprocess.Popen(
            [*KIBOAUTO, *args], stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
        )


@pytest.mark.req("KA-ENG-004")
def test_run_killed_50_times_and_resumed_delivers_exactly_the_plan(
    hil: tuple[Path, str], tmp_path: Path
) -> None:
    station, control = hil
    protocol = tmp_path / "kill.yaml"
    protocol.write_text(PROTOCOL, encoding="utf-8")
    run_dir = tmp_path / "run"
    log = tmp_path / "engine.log"
    common = ["--station", str(station), "--speed", f"{SPEED:g}", "--quiet"]
    rng = random.Random(SEED)
    journal = JournalReader(run_dir)
    before = _truth(control)
    kills: list[Kill] = []
    wall0 = time.monotonic()

    proc = _engine(["run", str(protocol), "--run-dir", str(run_dir), *common], log)
    finished_early = False
    while len(kills) < KILLS:
        spawned = time.monotonic()
        ups = journal.ups()
        mode = rng.choices(["dispense", "start-up", "anywhere"], weights=[6, 2, 2])[0]
        delay = {
            "dispense": rng.uniform(0.0, 0.6),
            "start-up": rng.uniform(0.05, 0.7),
            "anywhere": rng.uniform(0.0, 1.2),
        }[mode]
        # Never fall behind: the kills left share 90 % of the run's planned time left, so all
        # of them land inside the run however slowly processes start on this machine.
        left_s = PLANNED_S / SPEED - (spawned - wall0)
        deadline = spawned + max(0.2, 0.9 * left_s / (KILLS - len(kills)))
        up = False
        forced = False
        kill_at = spawned + delay if mode == "start-up" else None
        moving: list[str] = []
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                break
            if kill_at is None:
                up = up or journal.ups() > ups
                # "anywhere": as soon as the run is going; "dispense": once a pump moves
                if up and (mode == "anywhere" or _moving(_truth(control))):
                    kill_at = now + delay
            if now >= (deadline if kill_at is None else min(kill_at, deadline)):
                forced = kill_at is None or kill_at > deadline
                moving = _moving(_truth(control))
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                break
            time.sleep(0.01)
        if proc.returncode != -signal.SIGKILL:
            finished_early = True  # the run ended before this kill
            break
        up = up or journal.ups() > ups
        kills.append(
            Kill(
                mode,
                round(time.monotonic() - spawned, 3),
                up,
                forced,
                moving,
                journal.open_intents(),
                journal.running_step(),
            )
        )
        if (run_dir / JOURNAL_NAME).exists():
            proc = _engine(["resume", str(run_dir), *common], log)
        else:  # killed before it had journaled anything: start it again, as an operator would
            proc = _engine(["run", str(protocol), "--run-dir", str(run_dir), *common], log)
    last_kill = time.monotonic() - wall0
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        pytest.fail(f"the last resume did not finish the run:\n{_tail(log)}")
    wall = time.monotonic() - wall0

    # --- statistics
    by_mode = Counter(k.mode for k in kills)
    mid_move = [k for k in kills if k.moving]
    with_intent = [k for k in kills if k.open_intents]
    steps_hit = Counter(k.step or "-" for k in kills)
    print(
        f"\n{len(kills)} kills in {last_kill:.1f} s, run completed after {wall:.1f} s of wall "
        f"time; {sum(k.after_s for k in kills) / max(1, len(kills)):.2f} s from spawn to kill "
        f"on average ({by_mode['dispense']} aimed at "
        f"dispenses, {by_mode['start-up']} at start-up, {by_mode['anywhere']} anywhere)\n"
        f"  landed while a pump moved (ground truth): {len(mid_move)} "
        f"(pump1 {sum('pump1' in k.moving for k in kills)}, "
        f"valve1 {sum('valve1' in k.moving for k in kills)})\n"
        f"  left an open intent in the journal: {len(with_intent)}\n"
        f"  before the process had started/recovered the run: {sum(not k.up for k in kills)}\n"
        f"  at the deadline of their share of the run: {sum(k.forced for k in kills)}\n"
        f"  step running at the kill: {dict(steps_hit)}"
    )
    assert not finished_early, f"the run ended after only {len(kills)} kills"
    assert rc == 0, f"the last resume exited {rc}:\n{_tail(log)}"
    assert len(kills) == KILLS
    assert len(mid_move) >= 10 and len(with_intent) >= 10, kills
    assert sum(not k.up for k in kills) >= 3, kills

    # --- ground truth, asked as an operator would
    shown = subprocess.run(
        [*KIBOAUTO, "hil", "truth", "--control", control],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reply = json.loads(shown.stdout.strip().splitlines()[-1])
    assert reply["ok"], reply
    after = reply["truth"]

    with contextlib.closing(
        sqlite3.connect(f"file:{run_dir / JOURNAL_NAME}?mode=ro", uri=True)
    ) as conn:
        transitions = [r[0] for r in conn.execute("SELECT to_state FROM transitions ORDER BY id")]
        ok = Counter(r[0] for r in conn.execute("SELECT step FROM steps WHERE outcome = 'ok'"))
        actions = conn.execute(
            "SELECT step, device, kind, state, delivered_ul, marker FROM actions"
        ).fetchall()
        settled = conn.execute(
            "SELECT count(*) FROM actions WHERE json_extract(result, '$.reconciled')"
        ).fetchone()[0]
        events = Counter(r[0] for r in conn.execute("SELECT code FROM events"))
    print(
        f"  journal events: {events['action_followed']} open actions followed, "
        f"{events['action_reconciled']} reconciled, {events['action_lost']} lost; "
        f"{len(actions)} action rows, {settled} of them ended by a later process"
    )
    assert events["action_lost"] == 0
    # (events are grouped writes: those of a process killed soon after are lost with it; the
    # action rows are not)
    assert settled >= 3
    step_ul = {
        d: max(json.loads(a[5])["step_ul"] for a in actions if a[1] == d) for d in RIG["devices"]
    }
    for (device, key), ul in PLAN.items():
        moved = after[device][key] - before[device][key]
        assert moved == pytest.approx(ul, abs=step_ul[device] * 1.01), (
            f"{device} {key}: the simulator moved {moved} uL for a plan of {ul} uL "
            f"(one step is {step_ul[device]} uL)"
        )
    assert transitions[-1] == "completed", transitions[-5:]
    twice = {k: n for k, n in ok.items() if n > 1}
    assert not twice, f"steps with two 'ok' rows: {twice}"
    assert sorted(ok) == sorted(STEPS)
    assert all(a[3] == "ended" for a in actions), [a[:5] for a in actions if a[3] != "ended"]
    journaled = Counter[tuple[str, str]]()
    for _, device, kind, _, delivered, _ in actions:
        journaled[(device, kind)] += delivered or 0.0
    assert journaled[("pump1", "dispense")] == pytest.approx(80.0, abs=step_ul["pump1"] * 1.01)
    assert journaled[("valve1", "withdraw")] == pytest.approx(200.0, abs=step_ul["valve1"] * 1.01)
    assert journaled[("valve1", "dispense")] == pytest.approx(200.0, abs=step_ul["valve1"] * 1.01)
