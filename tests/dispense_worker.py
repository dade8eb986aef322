"""A driver process for the kill test: started, killed at a random instant, then replaced.

    python tests/dispense_worker.py start  DRIVER PORT JOURNAL VOLUME RATE [OPTIONS_JSON]
    python tests/dispense_worker.py finish DRIVER PORT JOURNAL VOLUME RATE [OPTIONS_JSON]
    python tests/dispense_worker.py setup  DRIVER PORT JOURNAL VOLUME RATE [OPTIONS_JSON]
    python tests/dispense_worker.py naive  DRIVER PORT JOURNAL VOLUME RATE [OPTIONS_JSON]

``start`` prepares a dispense, writes its marker to JOURNAL (fsynced, renamed into place) and only
then starts it: the rule "intent before action". ``finish`` is the process that comes up after a
crash: with a marker in JOURNAL it asks the device what was delivered and completes exactly the
remainder (:func:`kiboauto.actions.complete`); with none, nothing was started, so it runs the whole
dispense. ``naive`` is a restarted process that ignores the journal and simply issues the dispense
again (what the device layer must survive without moving anything twice). ``setup`` makes a Cavro
pump ready (initialised, syringe filled). Each prints one JSON line with what it saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from kiboauto.actions import complete, run_once
from kiboauto.clock import RealClock
from kiboauto.devices import ActionMarker, DeviceError
from kiboauto.drivers.streams import serial_connector
from kiboauto.drivers.transport import SerialTransport


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _rows(journal: Path) -> list[str]:
    return journal.read_text(encoding="utf-8").splitlines() if journal.exists() else []


def _append(journal: Path, row: str) -> None:
    # One journal row per marker, in order: the last one is the action now under way.
    _write_durably(journal, "\n".join([*_rows(journal), row]) + "\n")


def _driver(kind: str, port: str, options: dict[str, Any]) -> Any:
    clock = RealClock()
    if kind == "newera":
        from kiboauto.drivers.newera import NewEraPump

        transport = SerialTransport("pump", serial_connector(port, baudrate=19200), port=port)
        return NewEraPump("pump", transport, clock=clock, **options)
    from kiboauto.drivers.cavro import CavroPump

    transport = SerialTransport("pump", serial_connector(port, baudrate=9600), port=port)
    return CavroPump("pump", transport, clock=clock, **options)


async def main(
    mode: str, kind: str, port: str, journal: Path, volume: str, rate: str, options: dict[str, Any]
) -> dict[str, Any]:
    pump = _driver(kind, port, options)
    await pump.connect()
    try:
        if mode == "setup":
            if kind == "cavro":
                await pump.initialize()
                await pump.select_port(pump.input_port)
                await pump.set_top_speed(6000)  # fill in one second
                await pump.move_to(pump.steps_per_stroke)
            return {"ready": True}

        async def commit(marker: ActionMarker) -> None:
            _append(journal, marker.to_json())

        if mode == "naive":
            try:
                result = await pump.dispense(volume, rate)
            except DeviceError as e:
                return {
                    "error": type(e).__name__,
                    "message": e.message,
                    "delivered_ul": e.delivered_ul,
                }
            return {"delivered_ul": result.delivered_ul}
        if mode == "start":
            print(json.dumps({"starting": True}), flush=True)
            result = await run_once(pump, "dispense", volume, rate, commit)
            return {"delivered_ul": result.delivered_ul, "resumed": False}
        rows = _rows(journal)
        if not rows:
            result = await run_once(pump, "dispense", volume, rate, commit)
            return {"delivered_ul": result.delivered_ul, "resumed": False}
        marker = ActionMarker.from_json(rows[0])
        found = await pump.delivered_since(marker)  # a query: what the finisher found
        result = await complete(pump, marker, commit)
        return {
            "delivered_ul": result.delivered_ul,
            "resumed": True,
            "found_ul": found.delivered_ul,
            "found_moving": found.moving,
            "markers": len(_rows(journal)),
        }
    finally:
        await pump.close()


if __name__ == "__main__":
    mode, kind, port, journal, volume, rate = sys.argv[1:7]
    options = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    outcome = asyncio.run(main(mode, kind, port, Path(journal), volume, rate, options))
    print(json.dumps(outcome), flush=True)
