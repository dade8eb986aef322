"""Rig and station files: the defaults load, and malformed files say file, line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiboauto.config import ConfigError
from kiboauto.hil.rig import default_rig, load_rig
from kiboauto.station import default_station, load_station, station_from_hil_ports


def test_default_rig_has_one_device_of_each_kind() -> None:
    rig = default_rig()
    protocols = sorted(d.protocol for d in rig.devices.values())
    assert protocols == ["camera", "cavro", "modbus-tc", "newera"]


def test_default_station_simulates_the_default_rig_in_process() -> None:
    station = default_station()
    assert set(station.devices) == set(default_rig().devices)
    assert all(d.port == "sim" for d in station.devices.values())
    assert station.devices["pump1"].driver == "newera"
    assert station.devices["camera1"].driver == "opencv"


@pytest.mark.req("KA-BAD-002")
def test_rig_errors_name_file_line_and_reason(tmp_path: Path) -> None:
    rig = tmp_path / "bench.yaml"
    rig.write_text(
        "devices:\n"
        "  pump1:\n"
        "    protocol: newera\n"
        "  pump2:\n"
        "    protocol: harvard\n"
        "  pump3:\n"
        "    protocol: newera\n"
        "    tcp_port: 99999\n"
        "    faults: [{kind: explode}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_rig(rig)
    message = str(info.value)
    assert f"{rig}:5: devices.pump2.protocol" in message
    assert "unknown protocol 'harvard'" in message
    assert f"{rig}:8: devices.pump3.tcp_port" in message
    assert "explode" in message


@pytest.mark.req("KA-BAD-002")
def test_station_errors_name_file_line_and_reason(tmp_path: Path) -> None:
    station = tmp_path / "station.yaml"
    station.write_text(
        "devices:\n  pump1:\n    driver: newera\n    port: /dev/ttyUSB0\n    baudrat: 9600\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"station\.yaml:5: devices\.pump1\.baudrat: Extra"):
        load_station(station)
    broken = tmp_path / "broken.yaml"
    broken.write_text("devices:\n  pump1: {driver: newera, port: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+: not valid YAML"):
        load_station(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_station(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="devices: Field required"):
        load_station(empty)


def test_station_from_hil_serve_line() -> None:
    ports = {
        "pump1": {"port": "/dev/pts/5", "protocol": "newera", "address": 3, "baudrate": 19200},
        "inc": {"port": "/dev/pts/6", "protocol": "modbus-tc", "unit": 2, "baudrate": 9600},
        "cam": {"port": "http://127.0.0.1:8000/cam.png", "protocol": "camera"},
        "_control": {"port": "127.0.0.1:9", "protocol": "hil-control"},
    }
    station = station_from_hil_ports(ports)
    assert set(station.devices) == {"pump1", "inc", "cam"}
    assert station.devices["pump1"].options == {"address": 3}
    assert station.devices["inc"].options == {"unit": 2}
    assert station.devices["cam"].driver == "opencv"


@pytest.mark.req("KA-DEV-007")
def test_station_power_draw_by_state(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "devices:\n  pump1:\n    driver: newera\n    port: sim\n"
        "    power_w: {idle: 0.5, active: 6}\n",
        encoding="utf-8",
    )
    draw = load_station(good).devices["pump1"].power_w
    assert draw is not None
    assert (draw.idle, draw.active) == (0.5, 6.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "devices:\n  pump1:\n    driver: newera\n    port: sim\n"
        "    power_w: {idle: -1, active: .inf}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_station(bad)
    assert "bad.yaml:5" in str(info.value)
    assert "power_w" in str(info.value)
