"""The ``kiboauto`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiboauto import __version__
from kiboauto.clock import Clock, RealClock, ScaledClock
from kiboauto.config import ConfigError

app = typer.Typer(
    help=(
        "kiboauto: onboard experiment automation for protein-crystal and cell-culture payloads.\n\n"
        "Start with `kiboauto probe` (talks to every device of the built-in simulated rig) and\n"
        "`kiboauto hil serve` (puts simulated devices on serial ports for other programs)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
hil_app = typer.Typer(
    help="Hardware-in-the-loop: simulated devices that speak the real wire protocols.",
    no_args_is_help=True,
)
app.add_typer(hil_app, name="hil")

out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print("[bold red]error:[/]", escape(message), soft_wrap=True, highlight=False)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the kiboauto version."""
    out.print(__version__)


# ---------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------
@app.command()
def probe(
    station: Annotated[
        Path | None,
        typer.Option(
            "--station",
            "-s",
            help="Station file (YAML). Default: the built-in rig, simulated in this process.",
        ),
    ] = None,
    hil_ports: Annotated[
        Path | None,
        typer.Option(
            "--hil-ports",
            help="A file holding the JSON line printed by `kiboauto hil serve`: probe those ports.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per device.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per device.")] = 5.0,
) -> None:
    """Connect to every device of a station and show its identity, firmware and status.

    A bench engineer's first command on a new rig, real or simulated. Exits 1 if any device
    could not be reached.

    Examples:

        kiboauto probe                          # the built-in simulated rig
        kiboauto probe --station bench.yaml     # real pumps on /dev/ttyUSB*
        kiboauto hil serve > ports.json &  kiboauto probe --hil-ports ports.json
    """
    from kiboauto.station import default_station, load_station, station_from_hil_ports

    try:
        if station is not None and hil_ports is not None:
            raise _fail("give --station or --hil-ports, not both")
        if station is not None:
            spec = load_station(station)
        elif hil_ports is not None:
            try:
                line = hil_ports.read_text(encoding="utf-8").splitlines()[0]
                spec = station_from_hil_ports(json.loads(line))
            except (OSError, IndexError, ValueError) as e:
                raise _fail(f"{hil_ports}: not a `hil serve` JSON line: {e}") from e
        else:
            spec = default_station()
    except ConfigError as e:
        raise _fail(str(e)) from e
    rows = asyncio.run(_probe(spec, RealClock(), timeout))
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
    else:
        # Piped or captured output gets a wide table instead of one cut to 80 columns.
        console = out if out.is_terminal else Console(width=200)
        table = Table(title="kiboauto probe", show_lines=False)
        for col in ("device", "kind", "protocol", "port", "model", "firmware", "status"):
            table.add_column(col)
        for row in rows:
            if row["ok"]:
                table.add_row(
                    row["device"],
                    row["kind"],
                    row["protocol"],
                    row["port"],
                    row["model"],
                    row["firmware"],
                    f"[green]{row['status']}[/]",
                )
            else:
                table.add_row(row["device"], "", "", "", "", "", f"[red]{escape(row['error'])}[/]")
        console.print(table)
    if not all(row["ok"] for row in rows):
        raise typer.Exit(1)


async def _probe(spec: Any, clock: Clock, timeout: float) -> list[dict[str, Any]]:
    from kiboauto.devices import DeviceError
    from kiboauto.station import open_station

    rows: list[dict[str, Any]] = []
    async with open_station(spec, clock) as station:
        for name in spec.devices:
            if name in station.failures:
                rows.append({"device": name, "ok": False, "error": station.failures[name].message})
                continue
            device = station.devices[name]
            try:
                info = await clock.wait_for(device.identify(), timeout)
            except (DeviceError, TimeoutError) as e:
                message = e.message if isinstance(e, DeviceError) else f"no answer in {timeout} s"
                rows.append({"device": name, "ok": False, "error": message})
                continue
            rows.append(
                {
                    "device": name,
                    "ok": True,
                    "kind": info.kind,
                    "protocol": info.protocol,
                    "port": info.port,
                    "model": info.model,
                    "firmware": info.firmware,
                    "status": info.status,
                    "details": info.details,
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
@app.command()
def inspect(
    images: Annotated[
        list[Path] | None,
        typer.Argument(help="Drop images (PNG, JPEG, TIFF; 8 or 16 bit; grey or colour)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per image, one per line.")
    ] = False,
    overlay_dir: Annotated[
        Path | None,
        typer.Option("--overlay", help="Write an annotated PNG per image into this folder."),
    ] = None,
    um_per_px: Annotated[
        float, typer.Option("--um-per-px", help="Image scale in micrometres per pixel.", min=0)
    ] = 1.0,
    track_dir: Annotated[
        Path | None,
        typer.Option(
            "--track",
            help="A folder holding one growth cell's images over time: track the crystals, "
            "print the growth report and write the growth plot.",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Where --track writes its PNG plot (default: TRACK_DIR/growth.png)."),
    ] = None,
    interval_h: Annotated[
        float,
        typer.Option(
            "--interval-h",
            help="Hours between images for --track when the file names carry no _t<N>h time.",
            min=0,
        ),
    ] = 1.0,
) -> None:
    """Classify drop images (crystals, precipitate, clear, other) and measure every crystal.

    With --json each image gives one line: {"image", "class", "confidence", "count",
    "max_length_um", "crystals": [...], "latency_ms"}; latency_ms is the inspection alone, not
    reading or decoding the file. A file that cannot be read gives {"image", "error"} and the
    others go on; the exit code is 1 if any file failed.

    Examples:

        kiboauto inspect drops/*.png --um-per-px 2.0
        kiboauto inspect drops/*.jpg --json --overlay out/
        kiboauto inspect --track cell03/ --um-per-px 2.0   # cell03_t0h.png, cell03_t6h.png...
    """
    from kiboauto.inspect_cmd import inspect_files, json_line, track_directory

    if um_per_px <= 0:
        raise _fail("--um-per-px must be > 0")
    if not images and track_dir is None:
        raise _fail("give image files, or --track DIR (see --help)")
    from kiboauto.vision import warm_up

    with err.status("Preparing the vision routines (compiled on the first run on a machine)"):
        warm_up()
    failed = False
    if images:
        table = Table(title="kiboauto inspect")
        for col in ("image", "class", "confidence", "crystals", "max length µm", "ms"):
            table.add_column(col)
        for outcome in inspect_files(images, um_per_px=um_per_px, overlay_dir=overlay_dir):
            record = outcome.to_json()
            failed = failed or not outcome.ok
            if as_json:
                sys.stdout.write(json_line(record) + "\n")
                sys.stdout.flush()
            elif outcome.ok:
                table.add_row(
                    str(outcome.path),
                    record["class"],
                    f"{record['confidence']:.2f}",
                    str(record["count"]),
                    f"{record['max_length_um']:.0f}",
                    f"{outcome.latency_ms:.1f}",
                )
            else:
                table.add_row(str(outcome.path), f"[red]{escape(outcome.error)}[/]", "", "", "", "")
        if not as_json:
            (out if out.is_terminal else Console(width=200)).print(table)
    if track_dir is not None:
        if not track_dir.is_dir():
            raise _fail(f"--track {track_dir}: not a folder")
        target = plot or track_dir / "growth.png"
        report, outcomes = track_directory(
            track_dir, um_per_px=um_per_px, interval_s=interval_h * 3600.0, plot=target
        )
        for outcome in outcomes:
            if not outcome.ok:
                failed = True
                err.print("[red]skipped:[/]", escape(outcome.error))
        report["plot"] = str(target)
        sys.stdout.write(json.dumps(report, indent=None if as_json else 2) + "\n")
        if not as_json:
            err.print(f"growth plot written to {target}")
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
# hil
# ---------------------------------------------------------------------------------------------
@hil_app.command("serve")
def hil_serve(
    rig: Annotated[
        Path | None,
        typer.Option("--rig", "-r", help="Rig file (YAML). Default: one device of each kind."),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(help="Run the physics N times faster than real time (a ScaledClock).", min=0),
    ] = 1.0,
    tcp: Annotated[
        bool, typer.Option("--tcp", help="Also serve every serial device on socket://127.0.0.1")
    ] = False,
    rfc2217: Annotated[
        bool,
        typer.Option("--rfc2217", help="Also serve every serial device on rfc2217://127.0.0.1"),
    ] = False,
) -> None:
    """Start the rig's simulators on pseudo-terminals and run until SIGINT or SIGTERM.

    The first line of output is one JSON object mapping each device to where it listens:
    {"pump1": {"port": "/dev/pts/5", "protocol": "newera", "address": 0, ...}, ...}.
    Open the port with any serial client (pyserial, minicom, a vendor tool) as if it were
    /dev/ttyUSB0. "_control" is a local TCP port taking JSON lines for run-time fault injection
    (see `kiboauto hil fault`).
    """
    from kiboauto.hil.rig import load_rig

    if speed <= 0:
        raise _fail("--speed must be > 0")
    try:
        rig_file = load_rig(rig)
    except ConfigError as e:
        raise _fail(str(e)) from e
    for device in rig_file.devices.values():
        device.tcp = device.tcp or tcp
        device.rfc2217 = device.rfc2217 or rfc2217
    clock: Clock = RealClock() if speed == 1.0 else ScaledClock(speed)
    try:
        asyncio.run(_serve(rig_file, clock))
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from e


async def _serve(rig_file: Any, clock: Clock) -> None:
    from kiboauto.hil.server import HilServer

    server = HilServer(rig_file, clock)
    await server.start()
    try:
        sys.stdout.write(json.dumps(server.ports()) + "\n")
        sys.stdout.flush()
        err.print(
            f"[bold]kiboauto hil[/]: {len(server.simulators)} serial device(s), "
            f"{len(server.cameras)} camera(s), clock {clock!r}. Ctrl-C to stop."
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await server.close()
        err.print("kiboauto hil: stopped")


@hil_app.command("fault")
def hil_fault(
    control: Annotated[
        str,
        typer.Option("--control", "-c", help="The `_control` port from `hil serve` (HOST:PORT)"),
    ],
    device: Annotated[str, typer.Argument(help="Device name, as in the rig")],
    kind: Annotated[
        str,
        typer.Argument(help="drop | delay | corrupt | garbage | hangup | alarm | clear | status"),
    ],
    count: Annotated[int, typer.Option(help="Replies affected (0: until cleared)")] = 1,
    skip: Annotated[int, typer.Option(help="Good replies before the fault starts")] = 0,
    seconds: Annotated[float, typer.Option(help="Delay, or how long a hang-up lasts")] = 5.0,
    alarm: Annotated[str, typer.Option(help="Device alarm code for kind=alarm")] = "",
) -> None:
    """Inject a fault into a running `kiboauto hil serve` (or clear faults, or show status)."""
    if kind == "status":
        message: dict[str, Any] = {"status": True}
    elif kind == "clear":
        message = {"device": device, "clear": True}
    else:
        message = {
            "device": device,
            "fault": {
                "kind": kind,
                "count": count,
                "skip": skip,
                "seconds": seconds,
                "alarm": alarm,
            },
        }
    host, _, port = control.rpartition(":")
    try:
        reply = asyncio.run(_control(host or "127.0.0.1", int(port), message))
    except (OSError, ValueError) as e:
        raise _fail(f"cannot reach the HIL control port {control}: {e}") from e
    sys.stdout.write(json.dumps(reply) + "\n")
    if not reply.get("ok"):
        raise typer.Exit(1)


async def _control(host: str, port: int, message: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write((json.dumps(message) + "\n").encode())
        await writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 10))
        return reply
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def main() -> None:  # pragma: no cover - console entry point alias
    app()
