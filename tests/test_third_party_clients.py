"""Independent public client libraries, unmodified, against our simulators' ptys.

They were written from the manufacturers' manuals by other people: if they work against our
simulators, our simulators follow the manuals and not merely our own drivers' habits.

* NESP-Lib (PyPI ``nesp-lib``): a blocking New Era pump library that opens ``serial.Serial(path)``
  itself, starts in safe-mode framing, and in safe mode runs a heartbeat thread.
* pymodbus's own serial client against the temperature controller is in ``test_thermal.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from kiboauto.clock import ScaledClock
from kiboauto.hil.newera_sim import NewEraSim
from kiboauto.hil.ptyport import PtyPort

nesp_lib = pytest.importorskip("nesp_lib")


def _nesp_session(path: str, safe_timeout_s: int) -> dict[str, object]:
    """A bench engineer's script, written against NESP-Lib's documented API."""
    port = nesp_lib.Port(path, baud_rate=19200)
    try:
        pump = nesp_lib.Pump(port, address=0, safe_mode_timeout_s=safe_timeout_s)
        pump.syringe_diameter_mm = 4.78
        pump.pumping_direction = nesp_lib.PumpingDirection.INFUSE
        pump.pumping_volume_ml = 0.05
        pump.pumping_rate_ml_per_min = 0.5
        diameter = pump.syringe_diameter_mm
        pump.volume_infused_clear()
        pump.run(wait_while_running=True)  # polls status until the pump stops
        infused = pump.volume_infused_ml
        result = {
            "model": pump.model_number,
            "firmware": pump.firmware_version,
            "diameter": diameter,
            "infused_ml": infused,
            "status": pump.status,
        }
        if safe_timeout_s:
            pump.safe_mode_timeout_s = 0  # back to basic mode before the port closes
        return result
    finally:
        port.close()


@pytest.mark.req("KA-HIL-007")
@pytest.mark.parametrize("safe_timeout_s", [0, 10], ids=["basic-mode", "safe-mode"])
async def test_nesp_lib_drives_the_new_era_simulator(safe_timeout_s: int) -> None:
    # Physics 20x faster than real time: the 6 s dispense takes 0.3 s. A safe-mode user's pump
    # is already in safe mode (SAF is kept through power cycles); a basic-mode user's is not.
    sim = NewEraSim("pump1", ScaledClock(20.0), address=0, safe_timeout=safe_timeout_s)
    pty = PtyPort(sim)
    pty.start()
    try:
        result = await asyncio.wait_for(
            asyncio.to_thread(_nesp_session, pty.path, safe_timeout_s), 60
        )
    finally:
        await pty.close()
        await sim.aclose()
    assert result["model"] == 1000
    assert result["firmware"] == (3, 928)
    assert result["diameter"] == pytest.approx(4.78)
    assert result["infused_ml"] == pytest.approx(0.05, abs=1e-3)
    assert result["status"] == nesp_lib.Status.STOPPED
