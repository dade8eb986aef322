"""Recorded driver sessions: the same operations, played live against a simulator (to record a
byte trace) or against the recorded trace (to check that the driver still speaks the same bytes).

``python tests/sessions.py`` re-records ``tests/data/<protocol>_session.jsonl``; do that only when
a driver's bytes are meant to change, and review the diff of the trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kiboauto.clock import VirtualClock
from kiboauto.drivers.cavro import CavroPump
from kiboauto.drivers.modbus_tc import ModbusThermalController
from kiboauto.drivers.newera import NewEraPump
from kiboauto.drivers.streams import Connector
from kiboauto.drivers.trace import ByteTrace
from kiboauto.drivers.transport import SerialTransport
from kiboauto.hil.cavro_sim import CavroSim
from kiboauto.hil.newera_sim import NewEraSim
from kiboauto.hil.thermal_sim import ThermalSim

DATA = Path(__file__).parent / "data"


async def newera_session(pump: NewEraPump) -> dict[str, Any]:
    await pump.connect()
    info = await pump.identify()
    await pump.set_diameter("4.78 mm")
    dispensed = await pump.dispense("20 uL", "10 uL/min")
    return {"firmware": info.firmware, "dispensed_ul": round(dispensed.delivered_ul, 3)}


async def cavro_session(pump: CavroPump) -> dict[str, Any]:
    await pump.connect()
    await pump.initialize()
    await pump.select_port(3)
    await pump.withdraw("100 uL", "500 uL/min")
    port = await pump.current_port()
    return {"port": port, "position": await pump.position()}


async def thermal_session(tc: ModbusThermalController) -> dict[str, Any]:
    await tc.connect()
    await tc.set_setpoint("20 degC")
    await tc.run(True)
    await tc.settle("20 degC", "0.5 delta_degC", "60 s", "2 h")
    return {"pv_c": round(float((await tc.read_temperature()).to("degC").m), 1)}


SESSIONS: dict[str, tuple[type[Any], type[Any], Callable[[Any], Awaitable[dict[str, Any]]]]] = {
    "newera": (NewEraPump, NewEraSim, newera_session),
    "cavro": (CavroPump, CavroSim, cavro_session),
    "modbus-tc": (ModbusThermalController, ThermalSim, thermal_session),
}


def trace_file(protocol: str) -> Path:
    return DATA / f"{protocol.replace('-', '_')}_session.jsonl"


def play(protocol: str, connector_for: Callable[[Any, VirtualClock], Connector]) -> dict[str, Any]:
    """Run the protocol's session in virtual time over the connector; return its results."""
    driver_cls, sim_cls, session = SESSIONS[protocol]
    clock = VirtualClock()

    async def main() -> dict[str, Any]:
        sim = sim_cls(protocol, clock)
        transport = SerialTransport(protocol, connector_for(sim, clock), clock=clock, trace=TRACE)
        driver = driver_cls(protocol, transport, clock=clock)
        try:
            return await session(driver)
        finally:
            await driver.close()
            await sim.aclose()

    return clock.run(main())


TRACE = ByteTrace(limit=1_000_000)


def record(protocol: str) -> dict[str, Any]:
    TRACE._entries.clear()
    result = play(protocol, lambda sim, clock: sim.memory_connector())
    TRACE.save(trace_file(protocol))
    return result


if __name__ == "__main__":
    for name in SESSIONS:
        print(name, record(name), "->", trace_file(name))
