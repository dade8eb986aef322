"""The command line as a user runs it: `kiboauto hil serve` in its own process, `kiboauto probe`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kiboauto.clock import RealClock
from kiboauto.station import open_station, station_from_hil_ports

KIBOAUTO = [sys.executable, "-m", "kiboauto"]


def _start_serve(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [*KIBOAUTO, "hil", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"hil serve printed nothing; stderr: {proc.communicate()[1]}")
    return proc, json.loads(line)


async def talk_to(ports: dict[str, Any]) -> dict[str, str]:
    """Identify every device announced in a `hil serve` line, through the real drivers."""
    found = {}
    async with open_station(station_from_hil_ports(ports), RealClock()) as station:
        assert not station.failures, station.failures
        for name, device in station.devices.items():
            info = await device.identify()
            found[name] = info.model
    return found


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, stderr


@pytest.mark.req("KA-HIL-005")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_hil_serve_announces_ports_serves_drivers_and_stops_cleanly(sig: int) -> None:
    proc, ports = _start_serve("--tcp", "--rfc2217")
    try:
        assert ports["pump1"]["protocol"] == "newera"
        assert ports["valve1"]["protocol"] == "cavro"
        assert ports["incubator"]["protocol"] == "modbus-tc"
        assert ports["camera1"]["protocol"] == "camera"
        for name in ("pump1", "valve1", "incubator"):
            assert ports[name]["port"].startswith("/dev/pts/")
            assert os.path.exists(ports[name]["port"])
            assert ports[name]["tcp"].startswith("socket://127.0.0.1:")
            assert ports[name]["rfc2217"].startswith("rfc2217://127.0.0.1:")

        async def talk() -> dict[str, str]:
            return await talk_to(ports)

        models = asyncio.run(talk())
        assert set(models) == {"pump1", "valve1", "incubator", "camera1"}
        # The same devices over socket:// and rfc2217:// (a TCP serial server and Telnet COM port
        # control), through the same drivers.
        for key in ("tcp", "rfc2217"):
            over_net = {
                name: {**entry, "port": entry[key]} for name, entry in ports.items() if key in entry
            }
            assert set(asyncio.run(talk_to(over_net))) == {"pump1", "valve1", "incubator"}
    finally:
        code, stderr = _stop(proc, sig)
    assert code == 0, stderr
    assert "stopped" in stderr


@pytest.mark.req("KA-HIL-004")
def test_run_time_fault_injection_through_the_control_port() -> None:
    proc, ports = _start_serve()
    control = ports["_control"]["port"]
    try:
        result = subprocess.run(
            [*KIBOAUTO, "hil", "fault", "--control", control, "pump1", "drop", "--count", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        status = subprocess.run(
            [*KIBOAUTO, "hil", "fault", "--control", control, "pump1", "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert '"drop"' in status.stdout
        bad = subprocess.run(
            [*KIBOAUTO, "hil", "fault", "--control", control, "pump9", "drop"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 1
        assert "no simulated device 'pump9'" in bad.stdout
    finally:
        code, _ = _stop(proc)
    assert code == 0


@pytest.mark.req("KA-HIL-005")
@pytest.mark.req("KA-CLK-003")
def test_hil_serve_speed_runs_the_physics_faster() -> None:
    """--speed 600: a 10-minute dispense is over in about a second of real time."""
    from kiboauto.drivers.newera import NewEraPump
    from kiboauto.drivers.streams import serial_connector
    from kiboauto.drivers.transport import SerialTransport

    proc, ports = _start_serve("--speed", "600")
    try:

        async def dispense() -> tuple[float, bool, float]:
            clock = RealClock()
            path = ports["pump1"]["port"]
            line = serial_connector(path, baudrate=19200)
            transport = SerialTransport("pump1", line, clock=clock)
            pump = NewEraPump("pump1", transport, clock=clock)
            await pump.connect()
            await pump.set_diameter("14.43 mm")
            await pump.clear_dispensed()
            await pump.set_direction("INF")
            await pump.set_rate("10 uL/min")
            await pump.set_volume("100 uL")  # 10 minutes of pumping at 1x
            started = clock.now()
            await pump.run()
            while await pump.is_moving() and clock.now() - started < 30:
                await clock.sleep(0.1)
            real = clock.now() - started
            moving = await pump.is_moving()
            infused, _ = await pump.dispensed()
            await pump.close()
            return real, moving, float(infused.to("uL").m)

        real, moving, infused = asyncio.run(dispense())
    finally:
        _stop(proc)
    assert not moving
    assert infused == pytest.approx(100, abs=0.5)
    assert real < 30  # 600 s of pumping at 1x; at 600x it takes about one second


def test_hil_serve_camera_snapshots_over_http() -> None:
    """The rig's camera, served by `hil serve`, read through the OpenCV driver as a URL."""
    from kiboauto.drivers.camera import OpenCVCamera

    proc, ports = _start_serve()
    try:

        async def grab() -> tuple[int, ...]:
            camera = OpenCVCamera("camera1", ports["camera1"]["port"], clock=RealClock())
            await camera.connect()
            try:
                frame = await camera.capture()
                return tuple(frame.shape)
            finally:
                await camera.close()

        shape = asyncio.run(grab())
    finally:
        _stop(proc)
    assert shape == (960, 1280, 3)


@pytest.mark.req("KA-HIL-005")
def test_hil_serve_rejects_a_bad_rig_with_its_line(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text("devices:\n  p:\n    protocol: nope\n", encoding="utf-8")
    result = subprocess.run(
        [*KIBOAUTO, "hil", "serve", "--rig", str(rig)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "rig.yaml:3: devices.p.protocol" in result.stderr


@pytest.mark.req("KA-PRB-001")
@pytest.mark.req("KA-PKG-001")
def test_probe_default_rig_prints_every_device() -> None:
    result = subprocess.run([*KIBOAUTO, "probe"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("pump1", "valve1", "incubator", "camera1"):
        assert name in result.stdout


@pytest.mark.req("KA-PRB-001")
def test_probe_json_and_an_unreachable_device(tmp_path: Path) -> None:
    station = tmp_path / "station.yaml"
    station.write_text(
        "devices:\n"
        "  pump1: {driver: newera, port: sim}\n"
        "  ghost: {driver: newera, port: /dev/kiboauto-no-such-port}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [*KIBOAUTO, "probe", "--station", str(station), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    rows = {r["device"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["pump1"]["ok"] is True
    assert rows["pump1"]["firmware"]
    assert rows["ghost"]["ok"] is False
    assert "kiboauto-no-such-port" in rows["ghost"]["error"]


def test_probe_against_a_running_hil_serve(tmp_path: Path) -> None:
    proc, ports = _start_serve()
    try:
        ports_file = tmp_path / "ports.json"
        ports_file.write_text(json.dumps(ports) + "\n", encoding="utf-8")
        result = subprocess.run(
            [*KIBOAUTO, "probe", "--hil-ports", str(ports_file), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert {r["device"] for r in rows} == {"pump1", "valve1", "incubator", "camera1"}
        assert all(r["ok"] for r in rows)
    finally:
        _stop(proc)


def test_help_teaches() -> None:
    result = subprocess.run([*KIBOAUTO, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "probe" in result.stdout
    assert "hil" in result.stdout
