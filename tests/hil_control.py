"""Asking a running ``kiboauto hil serve`` for its ground truth over its control port (tests)."""

from __future__ import annotations

import json
import socket
from typing import Any


def ground_truth(host: str, port: int) -> dict[str, Any]:
    """The simulators' truth (what each device really did since power-on), as one JSON reply."""
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b'{"truth": true}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    assert reply["ok"], reply
    truth: dict[str, Any] = reply["truth"]
    return truth
