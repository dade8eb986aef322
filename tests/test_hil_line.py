"""HIL lines behave like lines: per-connection receive buffers, unread replies dropped, immediate
Cavro errors, bounded histories, validated faults, ground truth, and a probe that never crashes.

Everything runs over real ptys, real TCP sockets and real `kiboauto` processes; clients that
follow the manuals are written here from the manuals' byte formats, not taken from the drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from kiboauto.clock import RealClock, ScaledClock, VirtualClock
from kiboauto.hil.base import MAX_GARBAGE_SIZE, Fault, FaultInjector, FaultKind
from kiboauto.hil.cavro_sim import CavroSim
from kiboauto.hil.newera_sim import COMMAND_HISTORY, NewEraSim
from kiboauto.hil.ptyport import PtyPort, TcpPort
from kiboauto.hil.rig import RigFile, parse_fault
from kiboauto.hil.server import CONTROL_LINE_LIMIT, HilServer
from kiboauto.hil.thermal_sim import ThermalSim

KIBOAUTO = [sys.executable, "-m", "kiboauto"]

#: the New Era answer to ``0VER`` in basic mode: STX, address 00, status S, version, ETX
VER_REPLY = b"\x0200SNE1000V3.928\x03"


async def wait_until(condition: Any, seconds: float, what: str) -> None:
    """Poll ``condition()`` every few ms until it is true; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def served(sim: Any, *, tcp: bool = False) -> AsyncIterator[tuple[PtyPort, TcpPort | None]]:
    pty = PtyPort(sim)
    pty.start()
    tcp_port = TcpPort(sim) if tcp else None
    if tcp_port is not None:
        await tcp_port.start()
    try:
        yield pty, tcp_port
    finally:
        if tcp_port is not None:
            await tcp_port.close()
        await pty.close()
        await sim.aclose()


# ---------------------------------------------------------------------------------------------
# 1. Cavro immediate errors, seen by a client written from the manual's OEM byte format
# ---------------------------------------------------------------------------------------------
class OemClient:
    """A blocking Cavro OEM-protocol client (runs in a worker thread).

    Host to pump: STX, address ('1' = 0x31), sequence byte 0x30 | seq (0x08: repeat), command,
    ETX, XOR of every byte from STX to ETX. Pump to host: STX, '0', status, data, ETX, XOR.
    """

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 9600, timeout=1.0)
        self.seq = 0

    @staticmethod
    def block(address: int, seq: int, command: str, *, repeat: bool = False) -> bytes:
        head = bytes([0x02, 0x30 + address, 0x30 | seq | (0x08 if repeat else 0)])
        body = head + command.encode("ascii") + b"\x03"
        checksum = 0
        for b in body:
            checksum ^= b
        return body + bytes([checksum])

    def ask(self, command: str) -> tuple[int, str]:
        self.seq = self.seq % 7 + 1
        self.port.write(self.block(1, self.seq, command))
        answer = self.port.read_until(b"\x03")
        checksum = self.port.read(1)
        assert answer[:2] == b"\x020" and answer.endswith(b"\x03"), answer
        value = 0
        for b in answer:
            value ^= b
        assert checksum == bytes([value]), (answer, checksum)
        return answer[2], answer[3:-1].decode("ascii")

    def wait_ready(self) -> int:
        for _ in range(1000):
            status, _ = self.ask("Q")
            if status & 0x20:
                return status
            time.sleep(0.002)
        raise AssertionError("the pump never became ready")


@pytest.mark.req("KA-HIL-010")
async def test_cavro_immediate_errors_are_in_the_answer_itself_and_not_latched() -> None:
    sim = CavroSim("cavro", ScaledClock(200.0), ports=3)  # a 3-port valve: I/O/B
    async with served(sim) as (pty, _):

        def client() -> None:
            c = OemClient(pty.path)
            try:
                assert c.ask("ZR")[0] & 0x0F == 0
                assert c.wait_ready() == 0x60
                assert c.ask("A1000R")[0] & 0x0F == 0
                c.wait_ready()
                assert c.ask("?") == (0x60, "1000")

                # Out-of-range move: refused at once, error 3 in its own answer, pump ready...
                assert c.ask("A99999R") == (0x63, "")
                # ...not latched: the next Q reports no error, and the plunger did not move.
                assert c.ask("Q") == (0x60, "")
                assert c.ask("?") == (0x60, "1000")

                # A bad operand anywhere refuses the whole string: the speed is not set either.
                assert c.ask("V2000A0A3500R") == (0x63, "")
                assert c.ask("?2") == (0x60, "1400")
                assert c.ask("?") == (0x60, "1000")

                # Invalid command: error 2 at once, not latched.
                assert c.ask("J5R") == (0x62, "")
                assert c.ask("Q") == (0x60, "")

                # Valve in bypass: plunger move not allowed, error 11 at once, nothing moves.
                assert c.ask("BR")[0] & 0x0F == 0
                c.wait_ready()
                assert c.ask("A0R") == (0x6B, "")
                assert c.ask("Q") == (0x60, "")
                assert c.ask("?") == (0x60, "1000")

                # Command overflow: a move while the plunger moves, error 15 at once (busy).
                assert c.ask("OR")[0] & 0x0F == 0
                c.wait_ready()
                assert c.ask("V50A0R")[0] & 0x0F == 0
                assert c.ask("A500R") == (0x4F, "")
                assert c.ask("Q") == (0x40, "")  # still busy, no error left
                assert c.ask("TR")[0] & 0x0F == 0
            finally:
                c.port.close()

        await asyncio.to_thread(client)
        truth = sim.truth()
        assert truth["error"] == 0 and truth["initialized"] and not truth["busy"]
        assert truth["valve_port"] == 2
        assert 0 < truth["plunger_steps"] < 1000  # terminated part way down from 1000


def test_cavro_execution_errors_stay_latched_until_q() -> None:
    """A blocked line overloads the plunger while moving: the next answers show 9 until Q."""
    clock = VirtualClock()
    sim = CavroSim("cavro", clock, blocked=True)

    async def settle() -> None:
        await clock.sleep(5.0)

    assert sim.handle_bytes(b"/1ZR\r")[0][2] & 0x0F == 0
    clock.run(settle())
    assert sim.handle_bytes(b"/1A3000R\r")[0][2] == 0x40  # accepted: busy, no error yet
    clock.run(settle())
    assert sim.handle_bytes(b"/1?\r")[0][2] == 0x69  # ready, error 9 shown
    assert sim.handle_bytes(b"/1Q\r")[0][2] == 0x69  # Q reports it...
    assert sim.handle_bytes(b"/1Q\r")[0][2] == 0x60  # ...and clears it
    assert sim.handle_bytes(b"/1A0R\r")[0][2] == 0x69  # fatal: moves refused until Z


def test_deferred_errors_option_reproduces_the_xp3000_manual() -> None:
    clock = VirtualClock()
    sim = CavroSim("cavro", clock, deferred_errors=True)

    async def settle() -> None:
        await clock.sleep(5.0)

    sim.handle_bytes(b"/1ZR\r")
    clock.run(settle())
    assert sim.handle_bytes(b"/1A4000R\r")[0][2] == 0x60  # no error in the answer...
    assert sim.handle_bytes(b"/1Q\r")[0][2] == 0x63  # ...Q reports 3


# ---------------------------------------------------------------------------------------------
# 2a. one receive buffer per connection
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-010")
async def test_a_partial_frame_on_tcp_does_not_corrupt_requests_on_the_pty() -> None:
    sim = NewEraSim("pump", RealClock(), power_on_alarm=False)
    async with served(sim, tcp=True) as (pty, tcp):
        assert tcp is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
        try:
            writer.write(b"0VE")  # half a command, and the client stays connected
            await writer.drain()
            await wait_until(lambda: sim.received >= 3, 2.0, "the half frame")

            def client() -> list[bytes]:
                with serial.Serial(pty.path, 19200, timeout=1.0) as port:
                    replies = []
                    for _ in range(100):
                        port.write(b"0VER\r")
                        replies.append(port.read_until(b"\x03"))
                    port.write(b"0DI")  # and a half frame of its own, left on the pty
                    port.flush()
                    return replies

            assert await asyncio.to_thread(client) == [VER_REPLY] * 100
            # The TCP client's frame completes on its own connection, untouched by the pty's.
            writer.write(b"R\r")
            assert await asyncio.wait_for(reader.readuntil(b"\x03"), 2.0) == VER_REPLY
            for _ in range(10):
                writer.write(b"0VER\r")
                assert await asyncio.wait_for(reader.readuntil(b"\x03"), 2.0) == VER_REPLY
        finally:
            writer.close()


@pytest.mark.req("KA-HIL-010")
async def test_a_new_pty_client_does_not_inherit_the_last_clients_partial_frame() -> None:
    sim = NewEraSim("pump", RealClock(), power_on_alarm=False)
    async with served(sim) as (pty, _):

        def first() -> None:
            with serial.Serial(pty.path, 19200) as port:
                port.write(b"0VE")  # and goes away

        await asyncio.to_thread(first)
        await wait_until(lambda: sim.received >= 3, 2.0, "the first client's bytes")

        def second() -> bytes:
            with serial.Serial(pty.path, 19200, timeout=1.0) as port:
                port.write(b"0VER\r")
                return port.read_until(b"\x03")

        assert await asyncio.to_thread(second) == VER_REPLY
        assert sim.truth()["line"]["sessions"] == 2


# ---------------------------------------------------------------------------------------------
# 2b. replies nobody reads are dropped, and never block the simulator
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-010")
async def test_replies_nobody_reads_are_dropped_not_left_for_the_next_client() -> None:
    sim = NewEraSim("pump", RealClock(), power_on_alarm=False)
    queries = b"0VER\r" * 5000
    async with served(sim) as (pty, _):

        def careless_client() -> None:
            port = serial.Serial(pty.path, 19200, write_timeout=2.0)
            with contextlib.suppress(serial.SerialTimeoutException):
                port.write(queries)  # 5000 queries, and never reads a reply
            port.close()

        await asyncio.to_thread(careless_client)
        # The simulator answered (or dropped) every query without waiting for a reader.
        await wait_until(lambda: sim.received == len(queries), 3.0, "every query to be consumed")
        assert sim.overruns > 3000  # at most ~20 KB of replies fit in the pty at all
        assert sim.truth()["line"]["overruns"] == sim.overruns

        def next_client() -> tuple[bytes, bytes]:
            with serial.Serial(pty.path, 19200, timeout=1.0) as port:
                port.write(b"0VER\r")
                first = port.read(len(VER_REPLY))
                port.timeout = 0.05
                return first, port.read(4096)

        first, rest = await asyncio.to_thread(next_client)
        assert first == VER_REPLY
        assert rest == b""  # no backlog of the careless client's replies


@pytest.mark.req("KA-HIL-010")
async def test_a_tcp_client_that_never_reads_does_not_block_the_simulator() -> None:
    sim = NewEraSim("pump", RealClock(), power_on_alarm=False)
    queries = b"0VER\r" * 40_000
    async with served(sim, tcp=True) as (pty, tcp):
        assert tcp is not None

        def careless_client() -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5.0)
            sock.connect(("127.0.0.1", tcp.port))
            with contextlib.suppress(TimeoutError):
                sock.sendall(queries)
            return sock  # still connected, never reading

        sock = await asyncio.to_thread(careless_client)
        try:
            await wait_until(lambda: sim.received == len(queries), 5.0, "every query consumed")
            assert sim.overruns > 0

            def pty_client() -> bytes:
                with serial.Serial(pty.path, 19200, timeout=1.0) as port:
                    port.write(b"0VER\r")
                    return port.read_until(b"\x03")

            assert await asyncio.to_thread(pty_client) == VER_REPLY
        finally:
            sock.close()


# ---------------------------------------------------------------------------------------------
# 3. bounded histories, validated faults
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-010")
def test_command_and_fault_histories_are_bounded() -> None:
    sim = NewEraSim("pump", VirtualClock(), power_on_alarm=False)
    for chunk in range(3):
        sim.handle_bytes(b"0VER\r" * COMMAND_HISTORY)
        assert len(sim.commands) == COMMAND_HISTORY, chunk
    injector = FaultInjector()
    injector.inject(Fault(FaultKind.CORRUPT, count=0))
    for _ in range(5000):
        injector.next_for_reply()
    assert 0 < len(injector.applied) <= 1000


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"count": -1}, "count"),
        ({"skip": -3}, "skip"),
        ({"count": 1.5}, "count"),
        ({"seconds": float("nan")}, "seconds"),
        ({"seconds": float("inf")}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": 3601}, "seconds"),
        ({"size": 0}, "size"),
        ({"size": 30_000_000}, "size"),
        ({"size": "lots"}, "size"),
        ({"colour": "red"}, "unknown"),
    ],
)
@pytest.mark.req("KA-HIL-010")
def test_fault_settings_are_validated(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_fault("garbage", **settings)


@pytest.mark.req("KA-HIL-010")
def test_fault_limits_and_alarm_names_per_device() -> None:
    assert Fault.from_dict({"kind": "drop", "count": 0}).count == 0  # 0: until cleared
    assert parse_fault("garbage", size=MAX_GARBAGE_SIZE).size == MAX_GARBAGE_SIZE
    assert parse_fault("delay", seconds=3600).seconds == 3600.0
    with pytest.raises(ValueError, match="kind"):
        parse_fault("explode")
    # A rig file's alarm must be one its device knows.
    for protocol, good in (("newera", "stall"), ("cavro", "9"), ("modbus-tc", "overtemp")):
        RigFile.model_validate(
            {"devices": {"d": {"protocol": protocol, "faults": [{"kind": "alarm", "alarm": good}]}}}
        )
        with pytest.raises(ValueError, match="alarm"):
            RigFile.model_validate(
                {
                    "devices": {
                        "d": {"protocol": protocol, "faults": [{"kind": "alarm", "alarm": "bogus"}]}
                    }
                }
            )


async def test_a_large_garbage_fault_does_not_freeze_the_event_loop() -> None:
    sim = NewEraSim("pump", RealClock(), power_on_alarm=False)
    async with served(sim) as (pty, _):
        sim.inject(parse_fault("garbage", size=MAX_GARBAGE_SIZE, count=3))

        def client() -> int:
            got = 0
            with serial.Serial(pty.path, 19200, timeout=0.2) as port:
                for _ in range(3):
                    port.write(b"0VER\r")
                    while chunk := port.read(65536):
                        got += len(chunk)
            return got

        started = time.perf_counter()
        assert await asyncio.to_thread(client) > 0
        assert time.perf_counter() - started < 5.0


# ---------------------------------------------------------------------------------------------
# 4. ground truth
# ---------------------------------------------------------------------------------------------
@pytest.mark.req("KA-HIL-011")
def test_truth_advances_the_physics_to_now() -> None:
    clock = VirtualClock()
    pump = NewEraSim("pump", clock, power_on_alarm=False)
    incubator = ThermalSim("tc", clock, setpoint_c=30.0)
    for command in (b"0RAT60UM\r", b"0VOL0\r", b"0RUN\r"):  # 1 uL/s until stopped
        assert pump.handle_bytes(command)[0].startswith(b"\x0200")

    async def wait() -> None:
        await clock.sleep(600.0)

    clock.run(wait())
    truth = pump.truth()  # no byte arrived since RUN: truth() itself advances the pump
    assert truth["motion"] == "infusing"
    assert truth["infused_ul"] == pytest.approx(600.0)
    warm = incubator.truth()
    assert warm["temperature_c"] > 25.0 and warm["sv_c"] == 30.0 and warm["running"]
    assert 0.0 <= warm["heater_pct"] <= 100.0
    assert json.loads(json.dumps([truth, warm])) == [truth, warm]  # JSON-serialisable


@contextlib.asynccontextmanager
async def hil_server() -> AsyncIterator[HilServer]:
    rig = RigFile.model_validate(
        {
            "devices": {
                "pump1": {"protocol": "newera", "options": {"power_on_alarm": False}},
                "valve1": {"protocol": "cavro", "options": {"ports": 9}},
                "incubator": {"protocol": "modbus-tc"},
            }
        }
    )
    server = HilServer(rig, ScaledClock(100.0))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def control(port: int, message: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
    try:
        writer.write(message)
        await writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 5.0))
        return reply
    finally:
        writer.close()


def _dt(port: serial.Serial, command: bytes) -> bytes:
    port.write(b"/1" + command + b"\r")
    return port.read_until(b"\r\n")


@pytest.mark.req("KA-HIL-011")
async def test_truth_over_the_control_port_counts_what_the_host_cannot_clear() -> None:
    async with hil_server() as server:
        pump_path = server.ptys["pump1"].path
        valve_path = server.ptys["valve1"].path

        def drive() -> None:
            with serial.Serial(pump_path, 19200, timeout=1.0) as pump:
                # 0.05 mL (a 14.43 mm syringe counts in mL) at 6 mL/min: 50 uL in 0.5 s
                for command in (b"0VOL0.05\r", b"0RAT6000UM\r", b"0RUN\r"):
                    pump.write(command)
                    assert pump.read_until(b"\x03").startswith(b"\x0200")
                time.sleep(0.05)  # 5 s of protocol time: the run is over
                pump.write(b"0CLDINF\r")  # the host clears its DIS counter...
                pump.read_until(b"\x03")
            with serial.Serial(valve_path, 9600, timeout=1.0) as valve:
                for command in (b"ZR", b"A1500R", b"I3A0R"):
                    assert _dt(valve, command)[2] & 0x0F == 0
                    while not _dt(valve, b"Q")[2] & 0x20:
                        time.sleep(0.002)

        await asyncio.to_thread(drive)
        reply = await control(server.control_port, b'{"truth": true}\n')
        assert reply["ok"] is True
        truth = reply["truth"]
        assert set(truth) == {"pump1", "valve1", "incubator"}
        pump = truth["pump1"]
        assert pump["infused_ul"] == pytest.approx(50.0)  # ...the truth is not cleared
        assert pump["dis_infused_ul"] == 0.0
        assert pump["motion"] == "stopped" and pump["power_ons"] == 1
        valve = truth["valve1"]
        assert valve["initialized"] and valve["valve_port"] == 3 and valve["plunger_steps"] == 0
        assert valve["aspirated_ul"] == pytest.approx(125.0)
        assert valve["dispensed_ul"] == pytest.approx(125.0)
        assert valve["by_port"]["3"]["dispensed_ul"] == pytest.approx(125.0)
        assert truth["incubator"]["pv_c"] == pytest.approx(22.0, abs=0.1)

        only = await control(server.control_port, b'{"truth": true, "device": "valve1"}\n')
        assert only["ok"] and set(only["truth"]) == {"valve1"}
        unknown = await control(server.control_port, b'{"truth": true, "device": "pump9"}\n')
        assert unknown["ok"] is False and "pump9" in unknown["error"]


@pytest.mark.req("KA-HIL-010")
async def test_control_port_answers_oversized_and_malformed_messages_and_goes_on() -> None:
    async with hil_server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.control_port)
        try:
            bad_messages = [
                b'{"status": true, "pad": "' + b"x" * 2_000_000 + b'"}\n',
                b"[" * 100_000 + b"\n",
                b"not json\n",
                b'["a list"]\n',
                b'{"device": "pump1", "fault": {"kind": "garbage", "size": 30000000}}\n',
                b'{"device": "pump1", "fault": {"kind": "drop", "count": -1}}\n',
                b'{"device": "pump1", "fault": {"kind": "delay", "seconds": NaN}}\n',
                b'{"device": "pump1", "fault": {"kind": "alarm", "alarm": "bogus"}}\n',
                b'{"device": "pump1", "fault": "drop"}\n',
            ]
            errors = []
            for message in bad_messages:
                writer.write(message)
                writer.write(b'{"status": true}\n')
                await writer.drain()
                error = json.loads(await asyncio.wait_for(reader.readline(), 5.0))
                assert error["ok"] is False and error["error"], message[:60]
                errors.append(error["error"])
                status = json.loads(await asyncio.wait_for(reader.readline(), 5.0))
                assert status["ok"] is True  # the same connection goes on
            assert str(CONTROL_LINE_LIMIT) in errors[0]
            assert "size" in errors[4] and "count" in errors[5] and "seconds" in errors[6]
            assert "bogus" in errors[7]
        finally:
            writer.close()
        assert server.simulators["pump1"].faults.pending == []


# ---------------------------------------------------------------------------------------------
# 4/5. `kiboauto hil serve --station-out`, `kiboauto hil truth`, `kiboauto probe --station`
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hil_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    station = tmp_path_factory.mktemp("serve") / "station.yaml"
    proc = subprocess.Popen(
        [*KIBOAUTO, "hil", "serve", "--station-out", str(station)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"hil serve printed nothing: {proc.communicate()[1]}")
    try:
        yield json.loads(line), station
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr


@pytest.mark.req("KA-HIL-011")
def test_station_out_is_a_station_file_that_probe_drives(
    hil_serve: tuple[dict[str, Any], Path],
) -> None:
    ports, station = hil_serve
    assert station.is_file()  # written before the JSON line
    result = subprocess.run(
        [*KIBOAUTO, "probe", "--station", str(station), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["device"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(rows) == {"pump1", "valve1", "incubator", "camera1"}
    assert rows["pump1"]["port"] == ports["pump1"]["port"]


@pytest.mark.req("KA-HIL-011")
def test_hil_truth_command(hil_serve: tuple[dict[str, Any], Path]) -> None:
    ports, _ = hil_serve
    control_port = ports["_control"]["port"]
    result = subprocess.run(
        [*KIBOAUTO, "hil", "truth", "--control", control_port, "valve1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] and set(reply["truth"]) == {"valve1"}
    assert {"plunger_steps", "valve_port", "initialized", "dispensed_ul"} <= set(
        reply["truth"]["valve1"]
    )
    everything = subprocess.run(
        [*KIBOAUTO, "hil", "truth", "--control", control_port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    truth = json.loads(everything.stdout)["truth"]
    assert set(truth) == {"pump1", "valve1", "incubator", "camera1"}
    assert truth["camera1"]["kind"] == "camera" and truth["incubator"]["kind"] == "thermal"
    assert math.isfinite(truth["incubator"]["temperature_c"])

    unknown = subprocess.run(
        [*KIBOAUTO, "hil", "truth", "--control", control_port, "pump9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 1 and "pump9" in unknown.stderr

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    gone = subprocess.run(
        [*KIBOAUTO, "hil", "truth", "--control", f"127.0.0.1:{free}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 1 and "cannot reach" in gone.stderr
    assert "Traceback" not in gone.stderr


# ---------------------------------------------------------------------------------------------
# 6. probe never dies with a traceback
# ---------------------------------------------------------------------------------------------
class HostileNewEra(NewEraSim):
    """A New Era pump whose diameter answer is malformed in a way its regex still admits."""

    def _cmd_dia(self, arg: str) -> str:
        return "1..2" if arg == "" else super()._cmd_dia(arg)


@pytest.mark.req("KA-PRB-001")
async def test_probe_shows_a_driver_crash_as_that_devices_row(tmp_path: Path) -> None:
    sim = HostileNewEra("hostile", RealClock(), power_on_alarm=False)
    async with served(sim) as (pty, _):
        station = tmp_path / "station.yaml"
        station.write_text(
            "devices:\n"
            "  good: {driver: newera, port: sim}\n"
            f"  hostile: {{driver: newera, port: {pty.path}}}\n",
            encoding="utf-8",
        )
        proc = await asyncio.create_subprocess_exec(
            *KIBOAUTO,
            "probe",
            "--station",
            str(station),
            "--json",
            "--timeout",
            "5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert "Traceback" not in stderr.decode(), stderr.decode()
    assert proc.returncode == 1
    rows = {r["device"]: r for r in map(json.loads, stdout.decode().splitlines())}
    assert rows["good"]["ok"] is True
    assert rows["hostile"]["ok"] is False and rows["hostile"]["error"]
