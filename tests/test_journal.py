"""The run journal on real SQLite files: round trips, intents for resume, crashes, bad files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiboauto.actions import Commit, run_once
from kiboauto.clock import VirtualClock
from kiboauto.devices import ActionIncomplete, ActionMarker, PumpResult
from kiboauto.drivers.newera import NewEraPump
from kiboauto.drivers.transport import SerialTransport
from kiboauto.hil.newera_sim import NewEraSim
from kiboauto.journal import (
    JOURNAL_NAME,
    Journal,
    JournalError,
    OpenIntent,
    TelemetryRow,
)
from kiboauto.units import Q_

HERE = Path(__file__).parent


def marker(n: int, device: str = "pump1") -> ActionMarker:
    return ActionMarker(
        device=device,
        identity=f"NE1000-{device}",
        kind="dispense" if n % 2 == 0 else "withdraw",
        target_ul=12.5 + n,
        rate_ul_min=100.0,
        baseline={"infused": 1.25 * n, "withdrawn": 0.0, "mode": "VOL"},
        epoch="boot-7",
        created=1000.0 + n,
        step_ul=0.001,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal.open(tmp_path / JOURNAL_NAME)
    j.start_run("name: test\nsteps: []\n", "devices: {}\n", t_wall=1.0)
    return j


@pytest.mark.req("KA-JRN-001")
def test_run_and_every_record_kind_round_trip(tmp_path: Path) -> None:
    protocol = "name: grow\nsteps:\n  - dispense: 10 uL\n"
    with Journal.open(tmp_path) as j:  # a run directory: the journal file inside it
        assert not j.has_run
        run_id = j.start_run(protocol, "station: bench\n", t_wall=5.0)
        assert j.run_id == run_id
        run = j.run()
        assert run.protocol == protocol and run.station == "station: bench\n"
        assert run.protocol_sha256 == hashlib.sha256(protocol.encode()).hexdigest()
        assert run.created == 5.0

        j.record_transition("idle", "running", "start", "ground command", 0.0, 100.0)
        j.record_command("pause", {"why": "crew"}, "ground", False, "NOT_RUNNING", 1.0, 101.0)
        row = j.record_step_start("main/prime", 2, 2.0, 102.0)
        j.record_step_end(row, "ok", 3.0, 103.0)
        j.record_event("ALARM", "WARNING", "pump1 stalled", 104.0)
        n = j.record_telemetry(
            [
                TelemetryRow("tc1", "temperature", 20.5, "degC", "OK", 105.0),
                TelemetryRow("pump1", "status", "I", "", "OK", 105.0),
                TelemetryRow("pump1", "volume", None, "uL", "ALARM", 106.0),
            ]
        )
        assert n == 3 and j.record_telemetry([]) == 0
        j.record_inspection(
            "cell01", "ab" * 32, "img/cell01.png", {"crystals": 3}, 107.0, model_version="v2"
        )
        j.set_checkpoint("loop/main", {"i": 3, "deadline_protocol": 3600.0}, t_wall=108.0)
        j.set_checkpoint("loop/main", {"i": 4, "deadline_protocol": 7200.0}, t_wall=109.0)
        j.set_checkpoint("phase", "incubate")
        first = j.outbox_add("telemetry", {"t": 1}, t_wall=110.0)
        second = j.outbox_add("events", '{"raw": true}', t_wall=111.0)

    with Journal.open(tmp_path / JOURNAL_NAME) as j:  # everything is read back after reopening
        assert j.run_id == run_id
        (tr,) = j.rows("transitions")
        assert (tr["from_state"], tr["to_state"], tr["trigger"], tr["reason"]) == (
            "idle",
            "running",
            "start",
            "ground command",
        )
        assert (tr["t_protocol"], tr["t_wall"]) == (0.0, 100.0)
        (cmd,) = j.rows("commands")
        assert cmd["command"] == "pause" and json.loads(cmd["args"]) == {"why": "crew"}
        assert (cmd["source"], cmd["accepted"], cmd["reason_code"]) == ("ground", 0, "NOT_RUNNING")
        (step,) = j.rows("steps")
        assert (step["step"], step["attempt"], step["outcome"]) == ("main/prime", 2, "ok")
        assert (step["started_protocol"], step["ended_wall"]) == (2.0, 103.0)
        (ev,) = j.rows("events")
        assert (ev["code"], ev["severity"], ev["message"], ev["t"]) == (
            "ALARM",
            "WARNING",
            "pump1 stalled",
            104.0,
        )
        tel = j.rows("telemetry")
        assert [(r["name"], r["value"], r["unit"], r["severity"]) for r in tel] == [
            ("temperature", 20.5, "degC", "OK"),
            ("status", "I", "", "OK"),
            ("volume", None, "uL", "ALARM"),
        ]
        (ins,) = j.rows("inspections")
        assert ins["image_sha256"] == "ab" * 32 and ins["model_version"] == "v2"
        assert json.loads(ins["result"]) == {"crystals": 3}
        assert j.get_checkpoint("loop/main") == {"i": 4, "deadline_protocol": 7200.0}
        assert j.get_checkpoint("missing", 17) == 17
        assert j.checkpoints() == {
            "loop/main": {"i": 4, "deadline_protocol": 7200.0},
            "phase": "incubate",
        }
        pending = j.outbox_pending()
        assert [(p.outbox_id, p.topic) for p in pending] == [
            (first, "telemetry"),
            (second, "events"),
        ]
        assert json.loads(pending[0].payload) == {"t": 1} and pending[0].created == 110.0
        j.outbox_ack(first, 120.0)
        j.outbox_ack(first, 121.0)  # idempotent
        assert [p.outbox_id for p in j.outbox_pending()] == [second]
        with pytest.raises(ValueError):
            j.rows("runs; DROP TABLE actions")


@pytest.mark.req("KA-JRN-001")
def test_telemetry_rows_from_device_readings() -> None:
    from kiboauto.devices import Reading, Severity

    row = TelemetryRow.from_reading(
        "tc1", "temperature", Reading(Q_(21.5, "degC"), 12.0, Severity.MINOR)
    )
    assert row == TelemetryRow("tc1", "temperature", 21.5, str(Q_(1, "degC").units), "MINOR", 12.0)
    assert TelemetryRow.from_reading("p", "s", Reading("I", 1.0)).value == "I"


@pytest.mark.req("KA-JRN-001")
def test_open_intents_are_exactly_the_actions_without_an_end(journal: Journal) -> None:
    ids = [journal.record_intent(f"step/{n}", marker(n), t_protocol=float(n)) for n in range(6)]
    journal.end_action(ids[0], {"delivered_ul": 12.5})
    stalled = ActionIncomplete("pump1", "stalled")
    stalled.delivered_ul = 3.25
    journal.end_action(ids[2], error=stalled)
    journal.mark_lost(ids[4], "device re-initialised; ground decides")
    result = PumpResult(delivered_ul=17.5, target_ul=17.5, marker=marker(5))
    journal.end_action(ids[5], result)

    path = journal.path
    journal.close()
    with Journal.open(path) as j:
        found = j.open_intents()
        assert found == [
            OpenIntent(ids[1], "step/1", marker(1)),
            OpenIntent(ids[3], "step/3", marker(3)),
        ]
        for intent in found:  # equal to what was recorded, also through the JSON round trip
            assert ActionMarker.from_json(intent.marker.to_json()) == marker(int(intent.step[5:]))
        actions = {a.action_id: a for a in j.actions()}
        assert actions[ids[0]].state == "ended" and actions[ids[0]].delivered_ul == 12.5
        assert actions[ids[2]].state == "ended" and actions[ids[2]].delivered_ul == 3.25
        assert "ActionIncomplete: pump1: stalled" in str(actions[ids[2]].error)
        assert actions[ids[4]].state == "lost" and actions[ids[4]].result is None
        assert actions[ids[5]].delivered_ul == 17.5
        ended_result = actions[ids[5]].result
        assert ended_result is not None and ended_result["target_ul"] == 17.5
        assert actions[ids[1]].kind == "withdraw" and actions[ids[1]].device == "pump1"
        with pytest.raises(JournalError, match="not open"):
            j.end_action(ids[0], {"delivered_ul": 1.0})  # an action ends once
        with pytest.raises(JournalError, match="not open"):
            j.mark_lost(9999, "no such action")


@pytest.mark.req("KA-JRN-001")
def test_an_intent_is_visible_to_another_connection_and_process_when_recorded(
    journal: Journal,
) -> None:
    other = sqlite3.connect(journal.path)
    action_id = journal.record_intent("s", marker(3))
    row = other.execute("SELECT state, marker FROM actions WHERE id=?", (action_id,)).fetchone()
    assert row[0] == "open" and ActionMarker.from_json(row[1]) == marker(3)
    other.close()
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        "print(c.execute('SELECT marker FROM actions WHERE id=?', (int(sys.argv[2]),))"
        ".fetchone()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(journal.path), str(action_id)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert ActionMarker.from_json(out) == marker(3)
    journal.close()


@pytest.mark.req("KA-JRN-001")
def test_the_committer_commits_the_intent_before_the_start_is_sent(journal: Journal) -> None:
    """With a real driver and simulator: when commit runs, nothing has been started yet."""

    async def main(clock: VirtualClock) -> None:
        sim = NewEraSim("p", clock)
        transport = SerialTransport("pump1", sim.memory_connector(), port="mem:jrn", clock=clock)
        pump = NewEraPump("pump1", transport, clock=clock, address=sim.address)
        await pump.connect()
        committer = journal.intent_committer("main/dose", t_protocol=0.0)
        seen: list[tuple[int, bool]] = []

        async def commit(m: ActionMarker) -> None:
            await committer(m)
            started = "RUN" in sim.commands
            seen.append((committer.last_id, started))

        as_commit: Commit = commit
        result = await run_once(pump, "dispense", "20 uL", "100 uL/min", as_commit)
        journal.end_action(committer.last_id, result)
        assert seen == [(committer.last_id, False)]
        assert journal.open_intents() == []
        (action,) = journal.actions()
        assert action.marker == result.marker and action.delivered_ul == pytest.approx(20)
        await pump.close()
        await sim.aclose()

    clock = VirtualClock()
    clock.run(main(clock))
    journal.close()


@pytest.mark.req("KA-JRN-001")
def test_sigkill_at_random_instants_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    rng = random.Random(12)
    promised: set[int] = set()
    ended: set[int] = set()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "journal_worker.py"), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "ready\n", proc.stderr.read() if proc.stderr else first
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # cut by the kill mid-print: no promise was made
            word, _, number = line.partition(" ")
            (promised if word == "intent" else ended).add(int(number))

        check = sqlite3.connect(path)
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = check.execute(
            "SELECT id, state, marker, result, delivered_ul, ended_wall FROM actions"
        ).fetchall()
        check.close()
        states = {r[0]: r[1] for r in rows}
        assert promised <= set(states), "an intent the worker was told is committed is gone"
        assert all(states[i] == "ended" for i in ended)
        for _id, state, text, result, delivered, ended_wall in rows:
            ActionMarker.from_json(text)  # every marker whole
            if state == "open":
                assert result is None and delivered is None and ended_wall is None
            else:
                assert state == "ended" and result is not None and delivered is not None
                assert json.loads(result)["delivered_ul"] == delivered
    assert len(promised) > 10
    with Journal.open(path) as j:  # the public API reopens it; open intents are for resume
        # committed, but killed before it could print: open (for resume), never lost
        assert len(j.open_intents()) <= 10
        assert all(i.step.startswith("loop/") for i in j.open_intents())
        loop = j.get_checkpoint("loop")
        assert loop is None or loop["last"] in promised


@pytest.mark.req("KA-JRN-001")
def test_garbage_foreign_and_other_version_files_are_journal_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(JournalError, match=r"garbage\.sqlite") as info:
        Journal.open(garbage)
    assert info.value.path == garbage and info.value.reason

    foreign = tmp_path / "foreign.sqlite"
    c = sqlite3.connect(foreign)
    c.execute("CREATE TABLE notes(x)")
    c.commit()
    c.close()
    with pytest.raises(JournalError, match="not a kiboauto journal"):
        Journal.open(foreign)

    old = tmp_path / "old.sqlite"
    Journal.open(old).close()
    c = sqlite3.connect(old)
    c.execute("UPDATE schema_version SET version = 99")
    c.commit()
    c.close()
    with pytest.raises(JournalError, match="schema version 99"):
        Journal.open(old)

    damaged = tmp_path / "damaged.sqlite"
    with Journal.open(damaged) as j:
        j.start_run("p", "s")
        j.record_telemetry(TelemetryRow("d", "n", float(i), "", "OK", 0.0) for i in range(5000))
    c = sqlite3.connect(damaged)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    data = bytearray(damaged.read_bytes())
    for offset in range(4096 * 3, len(data) - 4096, 4096):  # leave page 1 (the header) alone
        data[offset : offset + 64] = os.urandom(64)
    damaged.write_bytes(bytes(data))
    with pytest.raises(JournalError, match=r"damaged\.sqlite"):
        Journal.open(damaged)

    with pytest.raises(JournalError, match="cannot open"):
        Journal.open(tmp_path / "no" / "such" / "dir" / "j.sqlite")


@pytest.mark.req("KA-JRN-001")
def test_no_run_yet_is_a_journal_error(tmp_path: Path) -> None:
    with Journal.open(tmp_path / JOURNAL_NAME) as j, pytest.raises(JournalError, match="no run"):
        j.record_intent("s", marker(1))
