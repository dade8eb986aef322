"""Serving a rig out of process: simulators on ptys (and TCP), cameras over HTTP, a control port.

:class:`HilServer` is what ``kiboauto hil serve`` runs. It starts every simulator of a rig on its
own pty (the path a client opens as a serial port), optionally on ``socket://127.0.0.1:PORT``,
serves simulated cameras as PNG snapshots over HTTP on 127.0.0.1, and listens on a local control
port for run-time fault injection and ground-truth queries (JSON lines, see
:meth:`HilServer.handle_control`). A control line longer than :data:`CONTROL_LINE_LIMIT` bytes is
answered with an error and skipped; the server goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from kiboauto.clock import Clock

from .base import Fault, Simulator
from .ptyport import PtyPort, Rfc2217Port, TcpPort
from .rig import CAMERA_PROTOCOL, RigFile, build_rig

__all__ = ["CONTROL_LINE_LIMIT", "HilServer", "camera_truth"]

log = logging.getLogger(__name__)

#: longest control message (one JSON line) the control port reads, in bytes
CONTROL_LINE_LIMIT = 64 * 1024


def camera_truth(camera: Any) -> dict[str, Any]:
    """What a simulated camera is doing, cheaply (no rendering): frames, cells, temperature."""
    truth: dict[str, Any] = {
        "protocol": "camera",
        "kind": "camera",
        "clock_s": camera.clock.now(),
        "connected": bool(getattr(camera, "connected", False)),
        "frames": int(getattr(camera, "frames", 0)),
        "cells": len(getattr(camera, "cells", ())) or 1,
        "selected_cell": getattr(camera, "selected", 1),
        "failures_applied": len(getattr(camera, "applied_failures", ())),
    }
    incubator = getattr(camera, "incubator", None)
    if incubator is not None:
        truth["incubator"] = getattr(incubator, "name", str(incubator))
        truth["temperature_c"] = float(incubator.temperature())
    return truth


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """One control line (``None`` at end of input); raises ValueError for one over the limit,
    after skipping it (the next line is read normally)."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        return e.partial or None
    except asyncio.LimitOverrunError as e:
        skipped = 0
        consumed = e.consumed
        while True:
            await reader.readexactly(consumed)
            skipped += consumed
            try:
                skipped += len(await reader.readuntil(b"\n"))
                break
            except asyncio.IncompleteReadError as end:
                skipped += len(end.partial)
                break
            except asyncio.LimitOverrunError as more:
                consumed = more.consumed
        raise ValueError(
            f"control message of {skipped} bytes is longer than {CONTROL_LINE_LIMIT} bytes"
        ) from None


class HilServer:
    """Runs the simulators of one rig where out-of-process clients can reach them."""

    def __init__(self, rig: RigFile, clock: Clock, *, host: str = "127.0.0.1") -> None:
        self.rig = rig
        self.clock = clock
        self.host = host
        self.simulators: dict[str, Simulator] = {}
        self.cameras: dict[str, Any] = {}
        self.ptys: dict[str, PtyPort] = {}
        self.tcps: dict[str, TcpPort] = {}
        self.rfc2217s: dict[str, Rfc2217Port] = {}
        self._http: asyncio.Server | None = None
        self._control: asyncio.Server | None = None
        self.http_port = 0
        self.control_port = 0
        self._client_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            for name, sim in build_rig(self.rig, self.clock).items():
                device = self.rig.devices[name]
                if device.protocol == CAMERA_PROTOCOL:
                    await sim.connect()
                    self.cameras[name] = sim
                    continue
                self.simulators[name] = sim
                pty = PtyPort(sim)
                pty.start()
                self.ptys[name] = pty
                if device.tcp:
                    tcp = TcpPort(sim, self.host, device.tcp_port)
                    await tcp.start()
                    self.tcps[name] = tcp
                if device.rfc2217:
                    rfc = Rfc2217Port(sim, self.host, device.rfc2217_port)
                    await rfc.start()
                    self.rfc2217s[name] = rfc
            if self.cameras:
                self._http = await asyncio.start_server(self._http_client, self.host, 0)
                self.http_port = self._http.sockets[0].getsockname()[1]
            self._control = await asyncio.start_server(
                self._control_client, self.host, 0, limit=CONTROL_LINE_LIMIT
            )
            self.control_port = self._control.sockets[0].getsockname()[1]
        except BaseException:
            await self.close()
            raise

    def ports(self) -> dict[str, Any]:
        """The first line ``hil serve`` prints: device name -> where and how to reach it."""
        out: dict[str, Any] = {}
        for name, sim in self.simulators.items():
            entry: dict[str, Any] = {
                "port": self.ptys[name].path,
                "protocol": sim.protocol,
                "kind": sim.kind,
            }
            entry.update(sim.describe())
            if name in self.tcps:
                entry["tcp"] = self.tcps[name].url
            if name in self.rfc2217s:
                entry["rfc2217"] = self.rfc2217s[name].url
            out[name] = entry
        for name, camera in self.cameras.items():
            base = f"http://{self.host}:{self.http_port}/{name}"
            out[name] = {
                "port": f"{base}.png",
                "protocol": CAMERA_PROTOCOL,
                "kind": "camera",
                "cells": len(getattr(camera, "cells", ())) or 1,
                "cell_url": base + "/cell/{n}.png",
            }
        out["_control"] = {"port": f"{self.host}:{self.control_port}", "protocol": "hil-control"}
        return out

    # -- cameras over HTTP -------------------------------------------------------------------------
    async def _http_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            line = request.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            path = parts[1] if len(parts) >= 2 else "/"
            # /NAME.png: the selected cell; /NAME/cell/N.png: cell N; /NAME/cell/N.json: its truth
            route = path.split("?")[0].strip("/")
            name, cell, what = route.removesuffix(".png"), None, "png"
            pieces = route.split("/")
            if len(pieces) == 3 and pieces[1] == "cell":
                stem, _, ext = pieces[2].partition(".")
                if stem.isdigit() and ext in ("png", "json"):
                    name, cell, what = pieces[0], int(stem), ext
                else:
                    name = ""
            camera = self.cameras.get(name)
            cells = len(getattr(camera, "cells", ())) or 1
            if len(parts) < 2 or parts[0] != "GET" or camera is None:
                body = f"no camera at {path}; cameras: {sorted(self.cameras)}\n".encode()
                head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            elif cell is not None and not 1 <= cell <= cells:
                body = f"{name} has no cell {cell} (cells 1..{cells})\n".encode()
                head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            elif what == "json":
                truth = camera.truth(cell)
                body = (json.dumps(truth.to_dict()) + "\n").encode()
                head = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
            else:
                import cv2

                if cell is None:
                    frame = await camera.capture()
                else:
                    frame = await camera.capture_cell(cell)
                ok, encoded = cv2.imencode(".png", frame)
                if not ok:
                    raise RuntimeError("PNG encoding failed")
                body = encoded.tobytes()
                head = "HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n"
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as e:  # a camera fault is the client's problem, not the server's
            body = f"camera error: {e}\n".encode()
            with contextlib.suppress(Exception):
                writer.write(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- ground truth ------------------------------------------------------------------------------
    def truth(self, device: str | None = None) -> dict[str, Any]:
        """Ground truth of every device (or of one), advanced to now; KeyError if unknown."""
        names = [*self.simulators, *self.cameras] if device is None else [device]
        out: dict[str, Any] = {}
        for name in names:
            if name in self.simulators:
                out[name] = self.simulators[name].truth()
            elif name in self.cameras:
                out[name] = camera_truth(self.cameras[name])
            else:
                raise KeyError(name)
        return out

    # -- run-time fault injection ------------------------------------------------------------------
    def handle_control(self, message: dict[str, Any]) -> dict[str, Any]:
        """One control request. Forms::

        {"device": "pump1", "fault": {"kind": "drop", "count": 2}}
        {"device": "pump1", "clear": true}
        {"status": true}
        {"truth": true}                      -> {"ok": true, "truth": {device: {...}, ...}}
        {"truth": true, "device": "pump1"}   -> {"ok": true, "truth": {"pump1": {...}}}
        """
        if message.get("truth"):
            device = message.get("device")
            try:
                return {"ok": True, "truth": self.truth(None if device is None else str(device))}
            except KeyError:
                known = sorted([*self.simulators, *self.cameras])
                return {"ok": False, "error": f"no simulated device {device!r}; have {known}"}
        if message.get("status"):
            return {
                "ok": True,
                "devices": {
                    name: {
                        "protocol": sim.protocol,
                        "line_dead": sim.line_dead,
                        "pending_faults": [f.kind.value for f in sim.faults.pending],
                        "applied_faults": [k.value for k in sim.faults.applied],
                        "overruns": sim.overruns,
                        "sessions": sim.sessions,
                    }
                    for name, sim in self.simulators.items()
                },
            }
        name = message.get("device")
        sim = self.simulators.get(str(name))
        if sim is None:
            known = sorted(self.simulators)
            return {"ok": False, "error": f"no simulated device {name!r}; have {known}"}
        if message.get("clear"):
            sim.faults.clear()
            return {"ok": True}
        fault_spec = message.get("fault")
        if not isinstance(fault_spec, dict):
            return {"ok": False, "error": "expected 'fault': {kind: ...} or 'clear': true"}
        try:
            fault = Fault.from_dict(fault_spec)
            sim.inject(fault)
        except Exception as e:
            return {"ok": False, "error": str(e)}
        return {"ok": True, "device": name, "fault": fault.kind.value}

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    line = await _read_line(reader)
                    if line is None:
                        break
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError("a control message is a JSON object")
                    reply = self.handle_control(message)
                except (ValueError, RecursionError) as e:
                    reply = {"ok": False, "error": f"bad control message: {e}"}
                except (ConnectionError, asyncio.IncompleteReadError):
                    raise
                except Exception as e:  # a bug here must not kill the server or print a trace
                    log.warning("control message failed: %r", e)
                    reply = {"ok": False, "error": f"control message failed: {e!r}"}
                writer.write((json.dumps(reply, default=str) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for server in (self._http, self._control):
            if server is not None:
                server.close()
        for tcp in [*self.tcps.values(), *self.rfc2217s.values()]:
            await tcp.close()
        for pty in self.ptys.values():
            await pty.close()
        for sim in self.simulators.values():
            await sim.aclose()
        for camera in self.cameras.values():
            with contextlib.suppress(Exception):
                await camera.close()
