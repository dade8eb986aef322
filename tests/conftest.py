"""Shared test fixtures. Tests talk to real ptys, real sockets and real files: no mocks of our parts."""

from __future__ import annotations

import pytest

from kiboauto.drivers.transport import SerialTransport


@pytest.fixture(autouse=True)
def _release_port_owners() -> None:
    """A failed test must not leave a port 'owned' for the next one."""
    SerialTransport._owners.clear()
