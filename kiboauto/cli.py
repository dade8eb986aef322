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
            sys.stdout.write(json.dumps(row, default=str) + "\n")
    else:
        # Piped or captured output gets a wide table instead of one cut to 80 columns.
        console = out if out.is_terminal else Console(width=200)
        table = Table(title="kiboauto probe", show_lines=False)
        for col in ("device", "kind", "protocol", "port", "model", "firmware", "status"):
            table.add_column(col)
        for row in rows:
            # Everything a device said is shown as text, never as rich markup.
            if row["ok"]:
                table.add_row(
                    *(
                        escape(str(row[key]))
                        for key in ("device", "kind", "protocol", "port", "model", "firmware")
                    ),
                    f"[green]{escape(str(row['status']))}[/]",
                )
            else:
                error = f"[red]{escape(row['error'])}[/]"
                table.add_row(escape(str(row["device"])), "", "", "", "", "", error)
        console.print(table)
    if not all(row["ok"] for row in rows):
        raise typer.Exit(1)


async def _probe(spec: Any, clock: Clock, timeout: float) -> list[dict[str, Any]]:
    """One row per device of ``spec``; never raises for a device's fault (or a driver's bug)."""
    from kiboauto.station import open_station

    rows: list[dict[str, Any]] = []
    try:
        async with open_station(spec, clock) as station:
            for name in spec.devices:
                rows.append(await _probe_one(name, station, clock, timeout))
    except Exception as e:  # escaped while connecting: every device not yet shown gets the reason
        shown = {row["device"] for row in rows}
        for name in spec.devices:
            if name not in shown:
                reason = f"station could not be opened: {_error_text(e)}"
                rows.append({"device": name, "ok": False, "error": reason})
    return rows


def _error_text(e: BaseException) -> str:
    """An error as a probe row shows it: a device error's own message, else type and text."""
    from kiboauto.devices import DeviceError

    if isinstance(e, DeviceError):
        return e.message
    if isinstance(e, TimeoutError):
        return str(e) or "timed out"
    return f"{type(e).__name__}: {e}"


async def _probe_one(name: str, station: Any, clock: Clock, timeout: float) -> dict[str, Any]:
    if name in station.failures:
        return {"device": name, "ok": False, "error": _error_text(station.failures[name])}
    device = station.devices[name]
    try:
        info = await clock.wait_for(device.identify(), timeout)
        return {
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
    except TimeoutError:
        return {"device": name, "ok": False, "error": f"no answer in {timeout} s"}
    except Exception as e:  # a DeviceError, or a driver bug (ValueError...): this device's row
        return {"device": name, "ok": False, "error": _error_text(e)}


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
    max_megapixels: Annotated[
        float,
        typer.Option(
            "--max-megapixels",
            help="Refuse (as that image's error, before decoding) a file whose header gives more "
            "than this many megapixels (width x height).",
        ),
    ] = 50.0,
    float_range: Annotated[
        str | None,
        typer.Option(
            "--float-range",
            help="LO:HI, the range float (TIFF) images are scaled from to 0..255. Without it a "
            "float image must lie in 0..1; NaN or infinite values are always refused.",
        ),
    ] = None,
) -> None:
    """Classify drop images (crystals, precipitate, clear, other) and measure every crystal.

    With --json each image gives one line: {"image", "class", "confidence", "raw_confidence",
    "count", "max_length_um", "crystals": [...], "well_found", "drop_found",
    "drop_area_fraction", "reasons": [...], "latency_ms"}. "confidence" is calibrated: about how
    often such an answer was right on held-apart rendered scenes of the same geometry (round well,
    other geometry, dark field); "raw_confidence" is the model's own. "reasons" says why the
    drop got its class. latency_ms is the inspection alone, not reading or decoding the file.
    A file that cannot be read gives {"image", "error"} and the others go on; the exit code is 1
    if any file failed. Only finite numbers are written: a
    non-finite value becomes null and the record lists it under "non_finite". Bad options, or an
    --overlay folder that cannot be used, stop with exit code 2 before any image.

    Examples:

        kiboauto inspect drops/*.png --um-per-px 2.0
        kiboauto inspect drops/*.jpg --json --overlay out/
        kiboauto inspect --track cell03/ --um-per-px 2.0   # cell03_t0h.png, cell03_t6h.png...
    """
    import math

    from kiboauto.inspect_cmd import (
        OverlayDirError,
        fmt_number,
        inspect_files,
        json_line,
        json_text,
        parse_float_range,
        prepare_overlay_dir,
        track_directory,
    )

    if not (math.isfinite(um_per_px) and um_per_px > 0):
        raise _fail(f"--um-per-px must be a finite number > 0, got {um_per_px!r}")
    if not (math.isfinite(interval_h) and interval_h >= 0):
        raise _fail(f"--interval-h must be a finite number >= 0, got {interval_h!r}")
    if not (math.isfinite(max_megapixels) and max_megapixels > 0):
        raise _fail(f"--max-megapixels must be a finite number > 0, got {max_megapixels!r}")
    max_pixels = max(1, int(max_megapixels * 1e6))
    try:
        value_range = None if float_range is None else parse_float_range(float_range)
    except ValueError as e:
        raise _fail(str(e)) from None
    if not images and track_dir is None:
        raise _fail("give image files, or --track DIR (see --help)")
    if overlay_dir is not None:
        try:
            prepare_overlay_dir(overlay_dir)
        except OverlayDirError as e:
            raise _fail(str(e)) from None
    from kiboauto.vision import warm_up

    with err.status("Preparing the vision routines (compiled on the first run on a machine)"):
        warm_up()
    failed = False
    if images:
        table = Table(title="kiboauto inspect")
        for col in ("image", "class", "confidence", "crystals", "max length µm", "ms"):
            table.add_column(col)
        for outcome in inspect_files(
            images,
            um_per_px=um_per_px,
            overlay_dir=overlay_dir,
            max_pixels=max_pixels,
            float_range=value_range,
        ):
            record = outcome.to_json()
            failed = failed or not outcome.ok
            if as_json:
                sys.stdout.write(json_line(record) + "\n")
                sys.stdout.flush()
            elif outcome.ok:
                table.add_row(
                    str(outcome.path),
                    record["class"],
                    fmt_number(record["confidence"], ".2f"),
                    str(record["count"]),
                    fmt_number(record["max_length_um"], ".0f"),
                    fmt_number(record["latency_ms"], ".1f"),
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
            track_dir,
            um_per_px=um_per_px,
            interval_s=interval_h * 3600.0,
            plot=target,
            max_pixels=max_pixels,
            float_range=value_range,
        )
        for outcome in outcomes:
            if not outcome.ok:
                failed = True
                err.print("[red]skipped:[/]", escape(outcome.error))
        plot_error = report.get("plot_error")
        report["plot"] = None if plot_error else str(target)
        sys.stdout.write(json_text(report, indent=None if as_json else 2) + "\n")
        if plot_error:
            failed = True
            err.print("[red]error:[/]", escape(str(plot_error)))
        elif not as_json:
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
    station_out: Annotated[
        Path | None,
        typer.Option(
            "--station-out",
            help="Also write a station file (YAML) for the served ports, for `probe --station`.",
        ),
    ] = None,
) -> None:
    """Start the rig's simulators on pseudo-terminals and run until SIGINT or SIGTERM.

    The first line of output is one JSON object mapping each device to where it listens:
    {"pump1": {"port": "/dev/pts/5", "protocol": "newera", "address": 0, ...}, ...}.
    Open the port with any serial client (pyserial, minicom, a vendor tool) as if it were
    /dev/ttyUSB0. "_control" is a local TCP port taking JSON lines for run-time fault injection
    and ground truth (see `kiboauto hil fault` and `kiboauto hil truth`). With --station-out the
    station file is written before the JSON line is printed.
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
        asyncio.run(_serve(rig_file, clock, station_out))
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from e


async def _serve(rig_file: Any, clock: Clock, station_out: Path | None = None) -> None:
    from kiboauto.hil.server import HilServer
    from kiboauto.station import station_from_hil_ports, write_station

    server = HilServer(rig_file, clock)
    await server.start()
    try:
        ports = server.ports()
        if station_out is not None:
            header = (
                "Station file written by `kiboauto hil serve --station-out`: the ports below are\n"
                "valid while that process runs. Use: kiboauto probe --station THIS_FILE"
            )
            write_station(station_from_hil_ports(ports), station_out, header=header)
        sys.stdout.write(json.dumps(ports) + "\n")
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
    size: Annotated[int, typer.Option(help="Random bytes sent by kind=garbage (1..65536)")] = 8192,
) -> None:
    """Inject a fault into a running `kiboauto hil serve` (or clear faults, or show status).

    Limits: --count >= 0 (0: until cleared), --skip >= 0, --seconds 0..3600, --size 1..65536.
    """
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
                "size": size,
            },
        }
    reply = _ask_control(control, message)
    sys.stdout.write(json.dumps(reply) + "\n")
    if not reply.get("ok"):
        raise typer.Exit(1)


@hil_app.command("truth")
def hil_truth(
    control: Annotated[
        str,
        typer.Option("--control", "-c", help="The `_control` port from `hil serve` (HOST:PORT)"),
    ],
    device: Annotated[
        str | None, typer.Argument(help="Device name, as in the rig (default: every device)")
    ] = None,
) -> None:
    """Print the ground truth of a running `kiboauto hil serve` as one JSON line.

    What the simulated hardware really did, past the wire protocol: for pumps the volume moved
    since power-on (a counter no host command clears), motion, plunger and valve, alarms; for
    the incubator the true temperature, PV, SV and outputs; for cameras the frames served. The
    physics are advanced to now first. Exits 1 if the server cannot be reached or the device is
    unknown.

    Example: kiboauto hil truth --control 127.0.0.1:40123 pump1
    """
    message: dict[str, Any] = {"truth": True}
    if device is not None:
        message["device"] = device
    reply = _ask_control(control, message)
    sys.stdout.write(json.dumps(reply) + "\n")
    if not reply.get("ok"):
        err.print("[bold red]error:[/]", escape(str(reply.get("error"))), highlight=False)
        raise typer.Exit(1)


def _ask_control(control: str, message: dict[str, Any]) -> dict[str, Any]:
    """Send one control message to `hil serve`; exit 1 with a clear message if that fails."""
    host, _, port_text = control.rpartition(":")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(f"--control must be HOST:PORT (the `_control` entry), got {control!r}", 1)
    try:
        return asyncio.run(_control(host or "127.0.0.1", int(port_text), message))
    except (OSError, ValueError) as e:
        raise _fail(f"cannot reach the HIL control port {control}: {e}", 1) from e


async def _control(host: str, port: int, message: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(host, port, limit=64 * 1024 * 1024)
    try:
        writer.write((json.dumps(message) + "\n").encode())
        await writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 10))
        return reply
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# ---------------------------------------------------------------------------------------------
# protocols and runs
# ---------------------------------------------------------------------------------------------
@app.command()
def validate(
    protocol: Annotated[Path, typer.Argument(help="Protocol file (YAML).")],
    station: Annotated[
        Path | None,
        typer.Option(help="Also check roles and feasibility against this station file."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Problems as JSON.")] = False,
) -> None:
    """Check a protocol before anything moves: syntax, units, roles, ranges, feasibility.

    Every problem is printed as `file:line:column: path: message`. Exit 0 when valid, 2 when not.
    """
    from kiboauto.protocol.commands import validate_main

    raise typer.Exit(validate_main(protocol, station, as_json))


@app.command()
def schema() -> None:
    """Print the JSON Schema of protocol files (for editors: completion and checks as you type)."""
    from kiboauto.protocol.commands import schema_main

    typer.echo(schema_main())


@app.command()
def diagram() -> None:
    """Print the run state machine as a Mermaid diagram (from the transition table itself)."""
    from kiboauto.engine.control import diagram_main

    typer.echo(diagram_main())


_SET_HELP = "Set a parameter, e.g. --set protein_volume='12 uL' (repeatable)."


def _parse_sets(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise _fail(f"--set {item!r}: expected NAME=VALUE, e.g. --set protein_volume='12 uL'")
        out[name.strip()] = value.strip()
    return out


@app.command()
def run(
    protocol: Annotated[
        Path, typer.Argument(help="Protocol file, or a run directory with an unfinished run.")
    ],
    hil: Annotated[
        bool, typer.Option("--hil", help="Run on the built-in simulated rig in this process.")
    ] = False,
    station: Annotated[
        Path | None,
        typer.Option(help="Station file: real devices, or `kiboauto hil serve --station-out`."),
    ] = None,
    speed: Annotated[
        str,
        typer.Option(help="'max': virtual time (days in seconds, --hil); N: N x real time."),
    ] = "",
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (journal, images, report).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP)] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Run the whole protocol in virtual time on the simulated rig; print each step's "
            "duration and the resources to request (power, crew minutes, downlink).",
        ),
    ] = False,
    auto_crew: Annotated[
        bool,
        typer.Option(help="A simulated crew confirms crew steps after their expected time."),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No live progress display.")] = False,
) -> None:
    """Run a protocol: validate it, then drive the devices, journal everything, obey commands.

    Control a running run from another terminal with `kiboauto ctl RUN_DIR ...`. If the process
    dies, `kiboauto resume RUN_DIR` goes on exactly where it stopped (no pump moves twice).
    """
    from kiboauto.run_cmd import RunRequest

    if protocol.is_dir():
        request = RunRequest(protocol=None, run_dir=protocol, station=station, resume=True)
    else:
        if not (hil or station or dry_run):
            raise _fail("choose the devices: --hil (simulated rig) or --station FILE")
        if hil and station:
            raise _fail("give --hil or --station, not both")
        request = RunRequest(protocol=protocol, run_dir=run_dir or _default_run_dir(protocol))
        request.station = None if (hil or dry_run) else station
    request.speed = speed or ("max" if _all_simulated(request.station) else "1")
    request.params = _parse_sets(set_)
    request.dry_run = dry_run
    request.auto_crew = auto_crew
    request.quiet = quiet
    raise typer.Exit(_drive(request))


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of an unfinished run.")],
    station: Annotated[
        Path | None, typer.Option(help="Station file (default: the journaled one).")
    ] = None,
    speed: Annotated[str, typer.Option(help="'max' or N x real time.")] = "",
    auto_crew: Annotated[bool, typer.Option(help="Simulated crew (HIL only).")] = False,
    quiet: Annotated[bool, typer.Option(help="No live progress display.")] = False,
) -> None:
    """Go on with an interrupted run: open actions are settled by asking the devices (a dispense
    still moving is followed, one stopped short completes only its remainder), then the run
    continues from the step it was in, on its own time base."""
    from kiboauto.run_cmd import RunRequest

    request = RunRequest(protocol=None, run_dir=run_dir, station=station, resume=True)
    request.speed = speed or "1"
    request.auto_crew = auto_crew
    request.quiet = quiet
    raise typer.Exit(_drive(request))


@app.command()
def demo(
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default: ./kiboauto-demo-<time>).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated drops.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No live progress display.")] = False,
) -> None:
    """Run the protein-crystal example (14 days) on the simulated rig in virtual time, with every
    image inspected and journaled, then write its report. Needs no hardware and no broker."""
    from kiboauto.run_cmd import UserError, demo_main

    try:
        raise typer.Exit(demo_main(run_dir, seed, quiet, out))
    except UserError as e:
        raise _fail(str(e), e.code) from None


@app.command()
def ctl(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a running run.")],
    command: Annotated[
        list[str],
        typer.Argument(
            help="pause | resume | hold | release | abort | skip | set NAME=VALUE | "
            "confirm STEP | status"
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="The reply as JSON.")] = False,
) -> None:
    """Send a command to a running run over its control socket; print the answer and its reason
    code. Exit 0 accepted, 1 refused, 2 no run listening."""
    from kiboauto.engine.control import ctl_main

    raise typer.Exit(ctl_main(run_dir, command, as_json))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to write (default RUN_DIR/report).")
    ] = None,
) -> None:
    """Render a run as PNG plots (temperature, volumes, events, crystals, confluence, last images
    with overlays) and one HTML page."""
    from kiboauto.engine.report import report_main

    raise typer.Exit(report_main(run_dir, out_dir))


def _drive(request: Any) -> int:
    """Run or resume ``request`` (a :class:`kiboauto.run_cmd.RunRequest`); a user mistake is
    one error line, not a traceback."""
    from kiboauto.run_cmd import UserError, run_main

    try:
        return run_main(request, out)
    except UserError as e:
        raise _fail(str(e), e.code) from None


def _all_simulated(station: Path | None) -> bool:
    """Whether every device runs in this process (``--hil``, or a station of ``port: sim``):
    then virtual time is the default."""
    if station is None:
        return True
    from kiboauto.station import load_station

    try:
        return all(d.port == "sim" for d in load_station(station).devices.values())
    except ConfigError:
        return False  # the run reports the file's problem


def _default_run_dir(protocol: Path) -> Path:
    import time as _time

    stamp = _time.strftime("%Y%m%d-%H%M%S")
    return Path(f"runs/{protocol.stem}-{stamp}")


def main() -> None:  # pragma: no cover - console entry point alias
    app()
