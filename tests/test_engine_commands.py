"""The one command path and the local control socket, on a real journal file and real sockets.

``BenchRun`` below is a small implementation of the engine's side of the contract
(:class:`~kiboauto.engine.commands.RunControl`), with two settable parameters and one fixed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from kiboauto.clock import RealClock
from kiboauto.engine.commands import (
    COMMANDS,
    MAX_COMMAND_CHARS,
    CommandPath,
    CommandRefused,
    RunControl,
    parse_command,
)
from kiboauto.engine.control import (
    MAX_LINE,
    POINTER_NAME,
    SOCKET_NAME,
    ControlError,
    ControlServer,
    NoRunListening,
    ctl_main,
    send_command,
)
from kiboauto.engine.machine import Reason, RunMachine, RunState, Verdict
from kiboauto.journal import Journal

S = RunState
ALL = list(RunState)

# name -> (unit, low, high, settable)
PARAMETERS: dict[str, tuple[str, float, float, bool]] = {
    "protein_volume": ("uL", 1.0, 50.0, True),
    "temperature": ("degC", 4.0, 30.0, True),
    "plate_wells": ("", 96.0, 96.0, False),
}
_VALUE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(\S*)\s*")


class BenchRun:
    """A run's side of the command contract, recording what it saw in the journal when called."""

    def __init__(self, machine: RunMachine, journal: Journal) -> None:
        self.machine = machine
        self.journal = journal
        self.values: dict[str, str] = {"protein_volume": "10 uL", "temperature": "20 degC"}
        self.waiting: str | None = None
        self.step: str | None = "dispense_protein"
        self.calls: list[str] = []
        self.seen: list[dict[str, Any]] = []  # last commands row at each action
        self.fail_with: BaseException | None = None
        self.gate: asyncio.Event | None = None

    def protocol_time(self) -> float:
        return 3600.0

    def check_parameter(self, name: str, value: str) -> Verdict | None:
        state = self.machine.state
        if name not in PARAMETERS:
            return Verdict(False, Reason.UNKNOWN_PARAMETER, f"no parameter {name}", state)
        unit, low, high, settable = PARAMETERS[name]
        if not settable:
            return Verdict(False, Reason.NOT_SETTABLE, f"{name} is fixed", state)
        m = _VALUE.fullmatch(value)
        if m is None:
            return Verdict(False, Reason.BAD_ARGUMENTS, f"{value!r} is not a number", state)
        if m.group(2) != unit:
            return Verdict(False, Reason.WRONG_UNIT, f"{name} is in {unit}", state)
        if not low <= float(m.group(1)) <= high:
            return Verdict(False, Reason.OUT_OF_RANGE, f"{name} in [{low}, {high}] {unit}", state)
        return None

    async def _act(self, what: str) -> str:
        self.calls.append(what)
        self.seen.append(self.journal.rows("commands")[-1])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return f"did {what}"

    async def set_parameter(self, name: str, value: str) -> str:
        message = await self._act(f"set {name}={value}")
        self.values[name] = value
        return message

    def waiting_for_confirmation(self) -> str | None:
        return self.waiting

    async def confirm(self, step: str) -> str:
        message = await self._act(f"confirm {step}")
        self.waiting = None
        return message

    def current_step(self) -> str | None:
        return self.step

    async def skip(self) -> str:
        return await self._act("skip")

    async def lifecycle(self, trigger: str) -> str:
        return await self._act(trigger)

    def status(self) -> dict[str, object]:
        return {"state": self.machine.state.value, "step": self.step, "parameters": self.values}


class Rig:
    """A journal, a machine wired to it the way the engine wires it, a BenchRun and the path."""

    def __init__(self, tmp_path: Path, state: RunState = S.RUNNING) -> None:
        self.journal = Journal.open(tmp_path / "journal.sqlite")
        self.journal.start_run("name: bench\n", "devices: {}\n", t_wall=0.0)
        self.transitions_seen: list[int] = []  # commands rows present at each transition
        self.machine = RunMachine(initial=state, on_transition=self._journal_transition)
        self.run = BenchRun(self.machine, self.journal)
        self.path = CommandPath(self.run, self.journal, RealClock())

    async def _journal_transition(self, src: RunState, dst: RunState, trig: str, why: str) -> None:
        self.transitions_seen.append(len(self.journal.rows("commands")))
        self.journal.record_transition(src, dst, trig, why, 3600.0, 1.0)

    def commands(self) -> list[dict[str, Any]]:
        return self.journal.rows("commands")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.journal.close()


def test_bench_run_implements_the_contract(rig: Rig) -> None:
    assert isinstance(rig.run, RunControl)


# ------------------------------------------------------------------------------------- per state

TEXT = {
    "pause": "pause",
    "resume": "resume",
    "hold": "hold",
    "release": "release",
    "abort": "abort",
    "skip": "skip",
    "set": "set protein_volume=12 uL",
    "confirm": "confirm load_plate",
    "status": "status",
}
ACCEPTING: dict[str, set[RunState]] = {
    "pause": {S.RUNNING},
    "resume": {S.PAUSED},
    "hold": {S.RUNNING, S.PAUSED},
    "release": {S.HOLDING},
    "abort": {S.LOADED, S.RUNNING, S.PAUSED, S.HOLDING},
    "skip": {S.RUNNING, S.PAUSED, S.HOLDING},
    "set": {S.LOADED, S.RUNNING, S.PAUSED, S.HOLDING},
    "confirm": {S.RUNNING, S.PAUSED},
    "status": set(RunState),
}
AFTER = {
    "pause": S.PAUSED,
    "resume": S.RUNNING,
    "hold": S.HOLDING,
    "release": S.RUNNING,
    "abort": S.ABORTED,
}
ALREADY = {("pause", S.PAUSED), ("resume", S.RUNNING), ("hold", S.HOLDING), ("release", S.RUNNING)}


@pytest.mark.req("KA-ENG-003")
def test_the_command_table() -> None:
    assert set(COMMANDS) == set(ACCEPTING)
    for name, spec in COMMANDS.items():
        assert set(spec.states) == ACCEPTING[name], name


@pytest.mark.req("KA-ENG-003")
@pytest.mark.parametrize(("name", "state"), [(n, s) for n in TEXT for s in ALL])
async def test_each_command_in_each_state(tmp_path: Path, name: str, state: RunState) -> None:
    rig = Rig(tmp_path, state)
    rig.run.waiting = "load_plate"
    reply = await rig.path.execute(TEXT[name])
    rows = rig.commands()
    assert len(rows) == 1
    row = rows[0]
    assert (row["command"], row["source"], row["t_protocol"]) == (name, "local", 3600.0)
    if state in ACCEPTING[name]:
        assert reply.accepted and reply.reason is Reason.OK, reply
        assert reply.state is AFTER.get(name, state)
        assert (row["accepted"], row["reason_code"]) == (1, "OK")
        if name == "status":
            assert reply.status is not None and reply.status["state"] == state.value
            assert rig.run.calls == []
        else:
            assert len(rig.run.calls) == 1
            # journaled before it was executed: the run saw its own accepted row
            assert rig.run.seen[-1]["id"] == row["id"] and rig.run.seen[-1]["accepted"] == 1
        if name in AFTER:
            assert rig.transitions_seen == [1]  # the command row came before the transition
            (transition,) = rig.journal.rows("transitions")
            assert (transition["from_state"], transition["to_state"]) == (state, AFTER[name])
    else:
        if state.terminal:
            expected = Reason.TERMINAL
        elif (name, state) in ALREADY:
            expected = Reason.ALREADY_IN_STATE
        else:
            expected = Reason.WRONG_STATE
        assert not reply.accepted and reply.reason is expected, reply
        assert reply.state is state
        assert (row["accepted"], row["reason_code"]) == (0, expected.value)
        assert rig.run.calls == [] and rig.journal.rows("transitions") == []
    data = reply.to_json()
    assert json.loads(json.dumps(data)) == data
    assert {"command", "accepted", "reason_code", "message", "state"} <= set(data)


# ------------------------------------------------------------------------------------- arguments


@pytest.mark.req("KA-ENG-003")
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("set protein_volume=12 uL", Reason.OK),
        ("SET temperature = 25 degC", Reason.OK),
        ('{"command": "set", "name": "protein_volume", "value": 12, "unit": "uL"}', Reason.OK),
        ("set volume=12 uL", Reason.UNKNOWN_PARAMETER),
        ("set protein_volume=120 uL", Reason.OUT_OF_RANGE),
        ("set protein_volume=0.5 uL", Reason.OUT_OF_RANGE),
        ("set protein_volume=12 mL", Reason.WRONG_UNIT),
        ("set protein_volume=12", Reason.WRONG_UNIT),
        ("set temperature=lots", Reason.BAD_ARGUMENTS),
        ("set plate_wells=48", Reason.NOT_SETTABLE),
    ],
)
async def test_set_is_checked_against_the_protocol(rig: Rig, text: str, reason: Reason) -> None:
    reply = await rig.path.execute(text)
    assert reply.reason is reason, reply
    assert reply.accepted == (reason is Reason.OK)
    (row,) = rig.commands()
    assert (row["command"], row["reason_code"]) == ("set", reason.value)
    args = json.loads(row["args"])
    assert set(args) == {"name", "value"}
    if reason is Reason.OK:
        assert rig.run.calls == [f"set {args['name']}={args['value']}"]
    else:
        assert rig.run.calls == []


@pytest.mark.req("KA-ENG-003")
async def test_confirm_needs_the_step_that_waits(rig: Rig) -> None:
    reply = await rig.path.execute("confirm load_plate")
    assert (reply.accepted, reply.reason) == (False, Reason.NOT_WAITING)
    rig.run.waiting = "load_plate"
    reply = await rig.path.execute({"command": "confirm", "step": "mix_buffer"})
    assert (reply.accepted, reply.reason) == (False, Reason.WRONG_STEP)
    assert "load_plate" in reply.message
    reply = await rig.path.execute({"command": "confirm", "step": "load_plate"})
    assert reply.accepted and rig.run.calls == ["confirm load_plate"]
    assert [r["reason_code"] for r in rig.commands()] == ["NOT_WAITING", "WRONG_STEP", "OK"]
    assert json.loads(rig.commands()[-1]["args"]) == {"step": "load_plate"}


@pytest.mark.req("KA-ENG-003")
async def test_skip_with_nothing_to_skip(rig: Rig) -> None:
    rig.run.step = None
    reply = await rig.path.execute("skip")
    assert (reply.accepted, reply.reason) == (False, Reason.NOTHING_TO_SKIP)
    assert rig.commands()[0]["reason_code"] == "NOTHING_TO_SKIP" and rig.run.calls == []


HUGE = "set protein_volume=" + "9" * (MAX_COMMAND_CHARS + 10)


@pytest.mark.req("KA-ENG-003")
@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ("", Reason.BAD_ARGUMENTS),
        ("   ", Reason.BAD_ARGUMENTS),
        ("\x00\x01\x02garbage", Reason.BAD_ARGUMENTS),
        (b"\xff\xfe\x80pause".decode("utf-8", errors="replace"), Reason.BAD_ARGUMENTS),
        ("pause\x1b[2J", Reason.BAD_ARGUMENTS),
        (HUGE, Reason.BAD_ARGUMENTS),
        ("launch", Reason.UNKNOWN_COMMAND),
        ("start", Reason.UNKNOWN_COMMAND),
        ("set protein_volume 12 uL", Reason.BAD_ARGUMENTS),
        ("set =12 uL", Reason.BAD_ARGUMENTS),
        ("set protein_volume=", Reason.BAD_ARGUMENTS),
        ("set 1x=3", Reason.BAD_ARGUMENTS),
        ("confirm", Reason.BAD_ARGUMENTS),
        ("confirm two words", Reason.BAD_ARGUMENTS),
        ("pause now", Reason.BAD_ARGUMENTS),
        ("{not json", Reason.BAD_ARGUMENTS),
        ("[1, 2]", Reason.UNKNOWN_COMMAND),
        ('{"command": 3}', Reason.BAD_ARGUMENTS),
        ('{"cmd": "pause"}', Reason.BAD_ARGUMENTS),
        ('{"command": "fly"}', Reason.UNKNOWN_COMMAND),
        ('{"command": "pause", "force": true}', Reason.BAD_ARGUMENTS),
        ('{"command": "set", "name": "protein_volume"}', Reason.BAD_ARGUMENTS),
        ('{"command": "set", "name": "protein_volume", "value": true}', Reason.BAD_ARGUMENTS),
        ('{"command": "set", "name": ["x"], "value": 1}', Reason.BAD_ARGUMENTS),
        ('{"command": "confirm", "step": 7}', Reason.BAD_ARGUMENTS),
        ('"pause"', Reason.UNKNOWN_COMMAND),
    ],
)
async def test_malformed_requests_are_refused_and_journaled(
    rig: Rig, request_: str, reason: Reason
) -> None:
    reply = await rig.path.execute(request_)
    assert (reply.accepted, reply.reason) == (False, reason), reply
    assert reply.message
    if reason is Reason.UNKNOWN_COMMAND:
        assert "expected one of" in reply.message
    (row,) = rig.commands()
    assert (row["accepted"], row["reason_code"]) == (0, reason.value)
    assert len(row["args"]) < 1000 and len(row["command"]) <= 50  # huge input is clipped
    assert rig.run.calls == [] and rig.machine.state is S.RUNNING


@pytest.mark.req("KA-ENG-003")
def test_parse_forms() -> None:
    assert parse_command("set protein_volume=12 uL").args == {
        "name": "protein_volume",
        "value": "12 uL",
    }
    assert parse_command({"command": "set", "name": "t", "value": "4 degC"}).args == {
        "name": "t",
        "value": "4 degC",
    }
    assert parse_command('  {"command": "PAUSE"} ').name == "pause"
    assert parse_command("Confirm load_plate").args == {"step": "load_plate"}
    assert parse_command("confirm main/load-plate.2").args == {"step": "main/load-plate.2"}
    bad = parse_command(12345)  # type: ignore[arg-type]
    assert bad.problem is Reason.BAD_ARGUMENTS and not bad.ok


# ------------------------------------------------------------------------------------- execution


@pytest.mark.req("KA-ENG-003")
async def test_a_command_the_run_cannot_do_after_all(rig: Rig) -> None:
    rig.run.fail_with = CommandRefused(Reason.BUSY, "the pump is priming")
    reply = await rig.path.execute("skip")
    assert (reply.accepted, reply.reason, reply.message) == (
        False,
        Reason.BUSY,
        "the pump is priming",
    )
    (row,) = rig.commands()
    assert row["accepted"] == 1  # it was accepted, journaled, then could not be done
    (event,) = rig.journal.rows("events")
    assert event["code"] == "COMMAND_NOT_DONE" and "BUSY" in event["message"]


@pytest.mark.req("KA-ENG-003")
async def test_an_engine_error_is_an_answer_and_the_path_goes_on(rig: Rig) -> None:
    rig.run.fail_with = RuntimeError("valve jammed")
    reply = await rig.path.execute("hold")
    assert (reply.accepted, reply.reason) == (False, Reason.INTERNAL_ERROR)
    assert "valve jammed" in reply.message and reply.state is S.HOLDING
    rig.run.fail_with = None
    assert (await rig.path.execute("release")).accepted
    assert [r["reason_code"] for r in rig.commands()] == ["OK", "OK"]
    assert [e["code"] for e in rig.journal.rows("events")] == ["COMMAND_NOT_DONE"]


@pytest.mark.req("KA-ENG-003")
async def test_a_journal_that_fails_stops_the_command_before_it_acts(rig: Rig) -> None:
    rig.journal.close()
    reply = await rig.path.execute("pause")
    assert (reply.accepted, reply.reason) == (False, Reason.INTERNAL_ERROR)
    assert rig.machine.state is S.RUNNING and rig.run.calls == []
    reply = await rig.path.execute("skip")
    assert (reply.accepted, reply.reason) == (False, Reason.INTERNAL_ERROR)
    assert rig.run.calls == []


@pytest.mark.req("KA-ENG-003")
async def test_commands_are_serialised(rig: Rig) -> None:
    rig.run.gate = asyncio.Event()
    first = asyncio.create_task(rig.path.execute("set protein_volume=12 uL"))
    second = asyncio.create_task(rig.path.execute("pause"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert rig.run.calls == ["set protein_volume=12 uL"]
    assert len(rig.commands()) == 1  # pause not even checked yet
    rig.run.gate.set()
    assert (await first).accepted and (await second).accepted
    assert rig.run.calls == ["set protein_volume=12 uL", "pause"]


@pytest.mark.req("KA-ENG-003")
async def test_source_is_journaled(rig: Rig) -> None:
    await rig.path.execute("status", source="ground")
    assert rig.commands()[0]["source"] == "ground"


# ------------------------------------------------------------------------------------- socket


async def raw_exchange(sock_path: Path, payload: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(str(sock_path), limit=4 * MAX_LINE)
    writer.write(payload)
    await writer.drain()
    lines = []
    while line := await reader.readline():
        lines.append(line)
        if len(lines) == payload.count(b"\n"):
            break
    writer.close()
    await writer.wait_closed()
    return lines


@pytest.mark.req("KA-ENG-003")
async def test_round_trip_over_the_socket(rig: Rig, tmp_path: Path) -> None:
    async with ControlServer(tmp_path, rig.path) as server:
        assert server.socket == tmp_path / SOCKET_NAME
        assert not (tmp_path / POINTER_NAME).exists()
        reply = await send_command(tmp_path, "pause")
        assert (reply["accepted"], reply["reason_code"], reply["state"]) == (True, "OK", "paused")
        reply = await send_command(tmp_path, {"command": "set", "name": "temperature", "value": 99})
        assert (reply["accepted"], reply["reason_code"]) == (False, "WRONG_UNIT")
        reply = await send_command(tmp_path, "status")
        assert reply["status"]["state"] == "paused" and reply["command"] == "status"
        # several requests on one connection, answered in order
        lines = await raw_exchange(server.socket, b"status\nresume\n")
        assert [json.loads(x)["command"] for x in lines] == ["status", "resume"]
    assert not (tmp_path / SOCKET_NAME).exists()
    assert [r["source"] for r in rig.commands()] == ["ctl"] * 5


@pytest.mark.req("KA-ENG-003")
async def test_concurrent_clients(rig: Rig, tmp_path: Path) -> None:
    async with ControlServer(tmp_path, rig.path):
        texts = [f"set protein_volume={n} uL" for n in range(1, 21)] + ["status"] * 10
        replies = await asyncio.gather(*(send_command(tmp_path, t) for t in texts))
    assert all(r["accepted"] for r in replies)
    assert len(rig.commands()) == 30
    assert sorted(rig.run.calls) == sorted(t for t in texts if t.startswith("set"))


@pytest.mark.req("KA-ENG-003")
async def test_garbage_lines_do_not_hurt_the_server(rig: Rig, tmp_path: Path) -> None:
    async with ControlServer(tmp_path, rig.path) as server:
        lines = await raw_exchange(
            server.socket, b"\x00\xff\xfe\x80\n{]\n\n" + os.urandom(200).replace(b"\n", b"") + b"\n"
        )
        replies = [json.loads(x) for x in lines]
        assert [r["accepted"] for r in replies] == [False] * 4
        assert {r["reason_code"] for r in replies} <= {"BAD_ARGUMENTS", "UNKNOWN_COMMAND"}
        # a client leaving mid-request: dropped, not executed
        _, writer = await asyncio.open_unix_connection(str(server.socket))
        writer.write(b"pau")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        assert (await send_command(tmp_path, "pause"))["accepted"]
    assert [r["accepted"] for r in rig.commands()] == [0, 0, 0, 0, 1]


@pytest.mark.req("KA-ENG-003")
async def test_an_over_long_line_is_refused_and_the_connection_closed(
    rig: Rig, tmp_path: Path
) -> None:
    async with ControlServer(tmp_path, rig.path) as server:
        reader, writer = await asyncio.open_unix_connection(str(server.socket))
        writer.write(b"set protein_volume=" + b"1" * (MAX_LINE + 100) + b"\nstatus\n")
        with contextlib.suppress(ConnectionError):  # the server may close before we are done
            await writer.drain()
        reply = json.loads(await reader.readline())
        assert (reply["accepted"], reply["reason_code"]) == (False, "BAD_ARGUMENTS")
        assert str(MAX_LINE) in reply["message"]
        assert await reader.read() == b""  # closed: the status after it was not served
        writer.close()
        assert (await send_command(tmp_path, "status"))["accepted"]
    assert [r["reason_code"] for r in rig.commands()] == ["BAD_ARGUMENTS", "OK"]


@pytest.mark.req("KA-ENG-003")
async def test_a_long_run_dir_is_served_through_the_pointer_file(rig: Rig, tmp_path: Path) -> None:
    run_dir = tmp_path / ("run-" + "x" * 60) / ("d" * 60)
    run_dir.mkdir(parents=True)
    assert len(str(run_dir / SOCKET_NAME)) > 110
    async with ControlServer(run_dir, rig.path) as server:
        pointer = run_dir / POINTER_NAME
        assert pointer.read_text().strip() == str(server.socket)
        assert not (run_dir / SOCKET_NAME).exists()
        assert len(os.fsencode(server.socket)) <= 103
        assert (await send_command(run_dir, "pause"))["state"] == "paused"
        private = server.socket.parent
    assert not pointer.exists() and not private.exists()
    with pytest.raises(NoRunListening):
        await send_command(run_dir, "status")


@pytest.mark.req("KA-ENG-003")
async def test_client_error_when_no_run_listens(tmp_path: Path) -> None:
    with pytest.raises(NoRunListening, match=r"no run is listening on .*control\.sock: is the run"):
        await send_command(tmp_path, "status")
    # a stale socket left by a dead run
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()
    with pytest.raises(NoRunListening):
        await send_command(tmp_path, "status")


@pytest.mark.req("KA-ENG-003")
async def test_stale_socket_removed_live_server_refused(rig: Rig, tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()
    async with ControlServer(tmp_path, rig.path):
        with pytest.raises(ControlError, match="another run is already listening"):
            await ControlServer(tmp_path, rig.path).start()
        assert (await send_command(tmp_path, "status"))["accepted"]  # the first one still serves
    (tmp_path / SOCKET_NAME).write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        await ControlServer(tmp_path, rig.path).start()
    with pytest.raises(ControlError, match="cannot listen on"):
        await ControlServer(tmp_path / "no such run", rig.path).start()


@pytest.mark.req("KA-ENG-003")
async def test_too_many_clients_get_busy(rig: Rig, tmp_path: Path) -> None:
    async with ControlServer(tmp_path, rig.path, max_clients=2) as server:
        held = [await asyncio.open_unix_connection(str(server.socket)) for _ in range(2)]
        for _ in range(20):  # let the server register both connections
            await asyncio.sleep(0)
        reply = json.loads((await raw_exchange(server.socket, b"status\n"))[0])
        assert reply["reason_code"] == "BUSY"
        for _, writer in held:
            writer.close()
    assert rig.commands() == []


@pytest.mark.req("KA-ENG-003")
async def test_ctl_main_exit_codes_and_output(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.run.waiting = "load_plate"
    async with ControlServer(tmp_path, rig.path):
        code = await asyncio.to_thread(ctl_main, tmp_path, ["pause"], False)
        out = capsys.readouterr().out
        assert code == 0 and "pause: accepted" in out and "paused" in out
        code = await asyncio.to_thread(ctl_main, tmp_path, ["pause"], False)
        assert code == 1 and "refused [ALREADY_IN_STATE]" in capsys.readouterr().out
        code = await asyncio.to_thread(ctl_main, tmp_path, ["set", "protein_volume=12", "uL"], True)
        reply: Mapping[str, Any] = json.loads(capsys.readouterr().out)
        assert code == 0 and reply["command"] == "set" and reply["accepted"] is True
        code = await asyncio.to_thread(ctl_main, tmp_path, ["status"], False)
        out = capsys.readouterr().out
        assert code == 0 and "step" in out and "dispense_protein" in out
    code = await asyncio.to_thread(ctl_main, tmp_path, ["status"], False)
    captured = capsys.readouterr()
    assert code == 2 and "no run is listening on" in captured.err
    code = await asyncio.to_thread(ctl_main, tmp_path, ["status"], True)
    assert code == 2 and "no run is listening" in json.loads(capsys.readouterr().out)["error"]
