"""The local control socket of a run (``kiboauto ctl``): newline-delimited JSON on a Unix socket.

A running run serves ``RUN_DIR/control.sock``. Each request is one line: a JSON object
(``{"command": "set", "name": "protein_volume", "value": "12 uL"}``) or a plain command text
(``set protein_volume=12 uL``). Each answer is one JSON line, :meth:`Reply.to_json`. Every request
goes through the run's :class:`~kiboauto.engine.commands.CommandPath`: the socket adds framing
only.

Unix socket paths are limited (about 107 bytes on Linux, 103 on macOS). When
``RUN_DIR/control.sock`` is longer, the server binds in a private directory under the system's
temporary directory and writes the real path into ``RUN_DIR/control.sock.path``; the client reads
it. See docs/state-machine.md for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from kiboauto.clock import Clock, default_clock
from kiboauto.engine.commands import Command, CommandPath, Reply
from kiboauto.engine.machine import Reason, RunMachine

__all__ = [
    "MAX_CLIENTS",
    "MAX_LINE",
    "POINTER_NAME",
    "SOCKET_NAME",
    "ControlError",
    "ControlServer",
    "NoRunListening",
    "ctl_main",
    "diagram_main",
    "send_command",
    "send_command_sync",
    "socket_path",
]

log = logging.getLogger(__name__)

SOCKET_NAME: Final = "control.sock"
"""The control socket's name in a run directory."""

POINTER_NAME: Final = "control.sock.path"
"""The file holding the socket's real path when the run directory's path is too long."""

MAX_LINE: Final = 64 * 1024
"""Longest request line in bytes; a longer one is refused and its connection closed."""

MAX_CLIENTS: Final = 32
"""Connections served at once; one more is answered BUSY and closed."""

_MAX_SUN_PATH: Final = 103  # bytes of a socket path, without the NUL: macOS 104, Linux 108


class ControlError(Exception):
    """The control socket cannot be served or reached; the message says why."""


class NoRunListening(ControlError):
    """No run is serving the control socket of a run directory."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"no run is listening on {run_dir / SOCKET_NAME}: is the run started?")
        self.run_dir = run_dir


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= _MAX_SUN_PATH


def socket_path(run_dir: Path) -> Path | None:
    """Where the control socket of ``run_dir`` is (the pointer file's target, or
    ``RUN_DIR/control.sock``); None when neither exists."""
    pointer = run_dir / POINTER_NAME
    with contextlib.suppress(OSError, UnicodeDecodeError):
        target = pointer.read_text(encoding="utf-8").strip()
        if target:
            return Path(target)
    direct = run_dir / SOCKET_NAME
    if direct.exists() or direct.is_symlink():
        return direct
    return None


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


def _answers(path: Path) -> bool:
    """Whether a live server accepts connections on ``path`` (a Unix connect never waits)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(str(path))
        except (BlockingIOError, InterruptedError):
            return True  # backlog full: alive but busy
        except OSError:
            return False
        return True


class ControlServer:
    """Serves a run's control socket: one JSON line in, one JSON line out, per request.

    Use ``async with ControlServer(run_dir, path):`` or :meth:`start` / :meth:`aclose`. Start
    removes a stale socket left by a dead run and refuses (:class:`ControlError`) when a live one
    answers. Garbage, over-long lines and clients vanishing mid-request never stop the server;
    every connection task is owned and awaited on close, and a command being executed is let to
    finish.
    """

    def __init__(
        self,
        run_dir: Path,
        path: CommandPath,
        *,
        max_line: int = MAX_LINE,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = path
        self.max_line = max_line
        self.max_clients = max_clients
        self._server: asyncio.AbstractServer | None = None
        self._socket: Path | None = None
        self._socket_ino: int | None = None
        self._private_dir: Path | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._commands: set[asyncio.Task[Reply]] = set()

    @property
    def socket(self) -> Path:
        """The path the server is bound to (under the run directory or the private directory)."""
        if self._socket is None:
            raise ControlError("the control server is not started")
        return self._socket

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ start and stop

    async def start(self) -> None:
        """Bind and listen (stale sockets removed; refused when another run answers)."""
        if self._server is not None:
            raise ControlError("the control server is already started")
        direct = self.run_dir / SOCKET_NAME
        pointer = self.run_dir / POINTER_NAME
        self._clear_stale(direct, pointer)
        if _fits(direct):
            target = direct
        else:
            self._private_dir = Path(tempfile.mkdtemp(prefix="kiboauto-ctl-"))
            target = self._private_dir / SOCKET_NAME
            if not _fits(target):
                shutil.rmtree(self._private_dir, ignore_errors=True)
                self._private_dir = None
                raise ControlError(
                    f"cannot bind the control socket: both {direct} and {target} are longer"
                    f" than {_MAX_SUN_PATH} bytes (set TMPDIR to a short directory)"
                )
        try:
            self._server = await asyncio.start_unix_server(
                self._connected, path=str(target), limit=self.max_line
            )
            os.chmod(target, 0o600)
            self._socket_ino = target.lstat().st_ino
            self._socket = target
            if target != direct:
                tmp = pointer.with_name(POINTER_NAME + ".tmp")
                tmp.write_text(f"{target}\n", encoding="utf-8")
                os.replace(tmp, pointer)
        except OSError as e:
            await self._teardown()
            raise ControlError(f"cannot listen on {target}: {e}") from e
        except BaseException:
            await self._teardown()
            raise
        log.info("control socket of %s listening on %s", self.run_dir, target)

    def _clear_stale(self, direct: Path, pointer: Path) -> None:
        candidates = [direct]
        linked = socket_path(self.run_dir)
        if linked is not None and linked != direct:
            candidates.append(linked)
        for candidate in candidates:
            if not (candidate.exists() or candidate.is_symlink()):
                continue
            if not _is_socket(candidate):
                raise ControlError(f"{candidate} exists and is not a socket: not removing it")
            if _answers(candidate):
                raise ControlError(
                    f"another run is already listening on {candidate}: stop it first"
                    f" (kiboauto ctl {self.run_dir} status)"
                )
            log.info("removing the stale control socket %s", candidate)
            candidate.unlink(missing_ok=True)
            if candidate != direct:
                parent = candidate.parent
                if parent.name.startswith("kiboauto-ctl-"):
                    with contextlib.suppress(OSError):
                        parent.rmdir()
        pointer.unlink(missing_ok=True)

    async def aclose(self) -> None:
        """Stop listening, end every connection (a command being executed finishes first),
        remove the socket and the pointer file. Idempotent."""
        if self._server is None:
            return
        await self._teardown()
        log.info("control socket of %s closed", self.run_dir)

    async def _teardown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if self._commands:
            await asyncio.gather(*self._commands, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        target, self._socket = self._socket, None
        if target is not None and _is_socket(target):
            with contextlib.suppress(OSError):
                if target.lstat().st_ino == self._socket_ino:
                    target.unlink()
        if self._private_dir is not None:
            with contextlib.suppress(OSError):
                (self.run_dir / POINTER_NAME).unlink()
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    # ------------------------------------------------------------------ connections

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if len(self._clients) > self.max_clients:
                busy = f"more than {self.max_clients} clients connected: try again"
                await self._answer(writer, self._plain(Reason.BUSY, busy))
                return
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():
                        log.info(
                            "control client left mid-request (%d bytes dropped)", len(e.partial)
                        )
                    return
                except asyncio.LimitOverrunError:
                    await self._answer(writer, await self._too_long())
                    return
                text = line.decode("utf-8", errors="replace").rstrip("\r\n")
                reply = await self._execute(text)
                await self._answer(writer, reply)
        except (ConnectionError, OSError) as e:
            log.debug("control client gone: %s", e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("control connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _execute(self, request: str | Command) -> Reply:
        """Run one command to its end even if this connection is cancelled meanwhile."""
        task = asyncio.get_running_loop().create_task(self.path.execute(request, source="ctl"))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        return await asyncio.shield(task)

    async def _too_long(self) -> Reply:
        refusal = Command(
            "",
            {"text": f"request line over {self.max_line} bytes"},
            Reason.BAD_ARGUMENTS,
            f"request line longer than {self.max_line} bytes: refused, connection closed",
        )
        return await self._execute(refusal)

    def _plain(self, reason: Reason, message: str) -> Reply:
        return Reply("", False, reason, message, self.path.state)

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, reply: Reply) -> None:
        writer.write(json.dumps(reply.to_json()).encode("utf-8") + b"\n")
        await writer.drain()


# ---------------------------------------------------------------------------------------- client


async def send_command(
    run_dir: Path,
    command: str | Mapping[str, object],
    timeout: float = 5.0,
    *,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Send one command to the run serving ``run_dir`` and return its reply (a JSON object).

    Raises :class:`NoRunListening` when no run serves the directory, :class:`ControlError` when
    the run does not answer within ``timeout`` seconds (on ``clock``) or answers garbage.
    """
    run_dir = Path(run_dir)
    clock = clock if clock is not None else default_clock()
    target = socket_path(run_dir)
    if target is None:
        raise NoRunListening(run_dir)
    line = command if isinstance(command, str) else json.dumps(dict(command))
    if "\n" in line:
        raise ControlError("a command is one line: it cannot hold a newline")
    try:
        with clock.real_io():
            async with clock.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(target), limit=MAX_LINE)
                try:
                    writer.write(line.encode("utf-8") + b"\n")
                    await writer.drain()
                    answer = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
    except (FileNotFoundError, ConnectionRefusedError):
        raise NoRunListening(run_dir) from None
    except TimeoutError:
        raise ControlError(f"the run at {run_dir} did not answer within {timeout:g} s") from None
    except (ConnectionError, OSError) as e:
        raise ControlError(f"cannot talk to the run at {run_dir}: {e}") from None
    if not answer:
        raise ControlError(f"the run at {run_dir} closed the connection without answering")
    try:
        data = json.loads(answer)
    except ValueError:
        raise ControlError(f"the run at {run_dir} answered garbage: {answer[:80]!r}") from None
    if not isinstance(data, dict):
        raise ControlError(f"the run at {run_dir} answered a non-object: {answer[:80]!r}")
    return data


def send_command_sync(
    run_dir: Path, command: str | Mapping[str, object], timeout: float = 5.0
) -> dict[str, Any]:
    """:func:`send_command` for code without an event loop (the command line)."""
    return asyncio.run(send_command(run_dir, command, timeout))


# ---------------------------------------------------------------------------------------- CLI


def ctl_main(run_dir: Path, words: list[str], as_json: bool) -> int:
    """``kiboauto ctl RUN_DIR WORDS... [--json]``: send the command, print the answer.

    Exit code 0 when accepted, 1 when refused, 2 when the run cannot be reached.
    """
    text = " ".join(words)
    try:
        reply = send_command_sync(Path(run_dir), text)
    except ControlError as e:
        if as_json:
            print(json.dumps({"error": str(e), "run_dir": str(run_dir)}))
        else:
            print(f"kiboauto ctl: {e}", file=sys.stderr)
        return 2
    accepted = reply.get("accepted") is True
    if as_json:
        print(json.dumps(reply, sort_keys=True))
    else:
        print(_human(reply))
    return 0 if accepted else 1


def _human(reply: Mapping[str, Any]) -> str:
    verdict = (
        "accepted" if reply.get("accepted") is True else f"refused [{reply.get('reason_code')}]"
    )
    name = reply.get("command") or "?"
    lines = [f"{name}: {verdict}: {reply.get('message')} (run {reply.get('state')})"]
    status = reply.get("status")
    if isinstance(status, Mapping):
        width = max((len(str(k)) for k in status), default=0)
        lines.extend(f"  {k!s:<{width}}  {_show(v)}" for k, v in status.items())
    return "\n".join(lines)


def _show(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def diagram_main() -> str:
    """The run state machine as a Mermaid diagram (``kiboauto ctl --diagram`` or docs)."""
    return RunMachine().mermaid()
