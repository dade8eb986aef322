"""Shared test fixtures. Tests use real ptys, sockets and files: no mocks of our own parts."""

from __future__ import annotations

import pytest

from kiboauto.drivers.transport import SerialTransport


@pytest.fixture(autouse=True)
def _release_port_owners() -> None:
    """A failed test must not leave a port 'owned' for the next one."""
    SerialTransport._owners.clear()
