"""`kiboauto report RUN_DIR`: a run's journal as PNG plots and one self-contained HTML page.

:func:`render_report` reads ``RUN_DIR/journal.sqlite`` (and the images under ``RUN_DIR``), draws
temperature, pump volumes, events and states, crystals, confluence and a mosaic of the last
image of each cell (:mod:`kiboauto.engine.report_plots`), and writes ``index.html`` next to the
PNGs: the run summary, pump totals, the plots, the events and the state transitions, with all
journal text HTML-escaped and no script or network reference. A plot the run has no data for is
not drawn; the page says "no data" in its place. Any problem the user can fix (no journal, an
empty or unreadable one, an unwritable output folder) is a :class:`ReportError`;
:func:`report_main` turns it into a message on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kiboauto.journal import JOURNAL_NAME, ActionRecord, Journal, JournalError

from .report_plots import (
    Event,
    InspectionRow,
    Limit,
    PumpAction,
    RunData,
    Series,
    StateSpan,
    TimeAxis,
    plot_confluence,
    plot_crystals,
    plot_events,
    plot_mosaic,
    plot_temperature,
    plot_volumes,
    pump_totals,
    severity_rank,
)

__all__ = ["ReportError", "ReportFiles", "render_report", "report_main"]

MAX_EVENT_ROWS = 2000
"""Most events listed in the page's table (the plot shows them all)."""

_PlotFn = Callable[[RunData, TimeAxis, Path], bool]
_PLOTS: tuple[tuple[str, str, _PlotFn], ...] = (
    ("temperature.png", "Temperature", plot_temperature),
    ("volumes.png", "Pump volumes", plot_volumes),
    ("events.png", "Events and run states", plot_events),
    ("crystals.png", "Crystals", plot_crystals),
    ("confluence.png", "Confluence", plot_confluence),
    ("mosaic.png", "Last image of each cell", plot_mosaic),
)


class ReportError(Exception):
    """A report cannot be made for a reason the user can act on (no journal, unwritable output)."""

    def __init__(self, run_dir: Path | str, reason: str) -> None:
        super().__init__(f"cannot report on {run_dir}: {reason}")
        self.run_dir = Path(run_dir)
        self.reason = reason


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`render_report` wrote: the HTML page and the PNG plots (in page order)."""

    html: Path
    pngs: list[Path] = field(default_factory=list)


@dataclass
class _Loaded:
    """The journal as the page and the plots need it."""

    data: RunData
    protocol_name: str
    protocol_sha256: str
    run_id: int
    created: float | None
    transitions: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    action_states: Counter[str]
    telemetry_rows: int


# ------------------------------------------------------------------ reading the journal


def _protocol_name(text: str) -> str:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return "(protocol not readable)"
    if isinstance(doc, dict) and doc.get("name") is not None:
        return str(doc["name"])
    return "(unnamed protocol)"


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _series(rows: list[dict[str, Any]]) -> list[Series]:
    grouped: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
    for r in rows:
        v, t = _float(r.get("value")), _float(r.get("t"))
        if v is None or t is None:
            continue
        ts, vs = grouped.setdefault((str(r["device"]), str(r["name"]), str(r["unit"])), ([], []))
        ts.append(t)
        vs.append(v)
    out = []
    for (device, name, unit), (ts, vs) in grouped.items():
        times, values = np.array(ts, dtype=np.float64), np.array(vs, dtype=np.float64)
        order = np.argsort(times, kind="stable")
        out.append(Series(device, name, unit, times[order], values[order]))
    return out


def _pair(value: Any) -> tuple[float | None, float | None] | None:
    if isinstance(value, dict):
        value = [value.get("low", value.get("min")), value.get("high", value.get("max"))]
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    lo, hi = _float(value[0]), _float(value[1])
    return None if lo is None and hi is None else (lo, hi)


def _limits(checkpoints: dict[str, Any]) -> list[Limit]:
    found = checkpoints.get("limits")
    if not isinstance(found, dict):
        return []
    out = []
    for key, spec in sorted(found.items()):
        if isinstance(spec, dict):
            yellow, red = _pair(spec.get("yellow")), _pair(spec.get("red"))
            if yellow is not None or red is not None:
                out.append(Limit(str(key), str(spec.get("unit", "")), yellow, red))
    return out


def _state_spans(transitions: list[dict[str, Any]], end_t: float) -> list[StateSpan]:
    timed = sorted(
        (t, i, r)
        for i, r in enumerate(transitions)
        if (t := _float(r.get("t_protocol"))) is not None
    )
    if not timed:
        return []
    spans = []
    first_t, _, first = timed[0]
    if first_t > 0:
        spans.append(StateSpan(str(first["from_state"]), 0.0, first_t))
    for k, (t, _, r) in enumerate(timed):
        until = timed[k + 1][0] if k + 1 < len(timed) else max(end_t, t)
        spans.append(StateSpan(str(r["to_state"]), t, until))
    return [s for s in spans if s.end > s.start or s is spans[-1]]


def _action_times(path: Path, run_id: int) -> dict[int, float]:
    """Protocol time of each action (its end, else its start), read from the actions table.

    :class:`~kiboauto.journal.ActionRecord` does not carry the times, so they are read here on a
    separate read-only connection; an unreadable table gives no times (actions are then listed,
    not plotted).
    """
    times: dict[int, float] = {}
    with contextlib.suppress(sqlite3.Error, OSError):
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10.0)
        try:
            for aid, started, ended in conn.execute(
                "SELECT id, started_protocol, ended_protocol FROM actions WHERE run_id=?",
                (run_id,),
            ):
                t = _float(ended) if _float(ended) is not None else _float(started)
                if t is not None:
                    times[int(aid)] = t
        finally:
            conn.close()
    return times


def _pump_action(a: ActionRecord, times: dict[int, float]) -> PumpAction:
    t = _float(getattr(a, "ended_protocol", None))
    t = t if t is not None else _float(getattr(a, "started_protocol", None))
    t = t if t is not None else times.get(a.action_id)
    delivered = _float(a.delivered_ul) if a.state != "open" else None
    return PumpAction(a.device, a.kind, delivered, a.state, t, a.step)


def _inspection(r: dict[str, Any]) -> InspectionRow:
    try:
        result = json.loads(r["result"]) if isinstance(r["result"], str) else r["result"]
    except ValueError:
        result = None
    return InspectionRow(
        str(r["cell"]),
        _float(r.get("t")),
        str(r.get("image_path") or ""),
        str(r.get("model_version") or ""),
        result if isinstance(result, dict) else {},
    )


def _load(run_dir: Path) -> _Loaded:
    if not run_dir.is_dir():
        raise ReportError(run_dir, "no such run directory")
    path = run_dir / JOURNAL_NAME
    if not path.is_file():
        raise ReportError(run_dir, f"no {JOURNAL_NAME} in {run_dir}")
    try:
        with Journal.open(path) as j:
            if not j.has_run:
                raise ReportError(run_dir, f"{JOURNAL_NAME} holds no run (empty journal)")
            run = j.run()
            transitions = j.rows("transitions")
            steps = j.rows("steps")
            telemetry = j.rows("telemetry")
            event_rows = j.rows("events")
            inspection_rows = j.rows("inspections")
            records = j.actions()
            checkpoints = j.checkpoints()
            times = _action_times(path, j.run_id)
    except JournalError as e:
        raise ReportError(run_dir, e.reason) from None
    series = _series(telemetry)
    actions = [_pump_action(a, times) for a in records]
    events = [
        Event(str(r["code"]), str(r["severity"]).lower(), str(r["message"]), _float(r.get("t")))
        for r in event_rows
    ]
    inspections = [_inspection(r) for r in inspection_rows]
    stamps = [float(s.t[-1]) for s in series if len(s.t)]
    stamps += [t for e in events if (t := e.t) is not None]
    stamps += [t for a in actions if (t := a.t) is not None]
    stamps += [t for i in inspections if (t := i.t) is not None]
    for r in transitions:
        stamps.append(_float(r.get("t_protocol")) or 0.0)
    for r in steps:
        stamps.append(_float(r.get("ended_protocol")) or _float(r.get("started_protocol")) or 0.0)
    end_t = max(stamps, default=0.0)
    data = RunData(
        run_dir=run_dir,
        end_t=end_t,
        series=series,
        limits=_limits(checkpoints),
        states=_state_spans(transitions, end_t),
        actions=actions,
        events=events,
        inspections=inspections,
    )
    return _Loaded(
        data=data,
        protocol_name=_protocol_name(run.protocol),
        protocol_sha256=run.protocol_sha256,
        run_id=run.run_id,
        created=run.created,
        transitions=transitions,
        steps=steps,
        action_states=Counter(a.state for a in records),
        telemetry_rows=len(telemetry),
    )


# ------------------------------------------------------------------ the page


def _duration(seconds: float) -> str:
    s = round(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d} d {h} h {m} min"
    if h:
        return f"{h} h {m} min"
    return f"{m} min {s} s" if m else f"{s} s"


def _clock(t: float | None) -> str:
    """Protocol time as ``[D d ]HH:MM:SS``."""
    if t is None:
        return "—"
    s = round(t)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d} d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    out = [f'<table class="{cls}">' if cls else "<table>", "<tr>"]
    out += [f"<th>{_esc(h)}</th>" for h in head]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; }
table.summary th { width: 12em; }
img { max-width: 100%; border: 1px solid #ddd; }
p.nodata { color: #777; font-style: italic; }
tr.sev-warning td { background: #fff7dd; } tr.sev-alarm td, tr.sev-error td { background: #fde2e2; }
tr.sev-critical td { background: #f7c6c6; font-weight: bold; }
"""


def _summary(loaded: _Loaded) -> str:
    d = loaded.data
    final = str(loaded.transitions[-1]["to_state"]) if loaded.transitions else "(no transitions)"
    outcomes = Counter(str(s.get("outcome") or "running") for s in loaded.steps)
    severities = Counter(e.severity for e in d.events)
    created = "—"
    if loaded.created is not None:
        created = (
            datetime.fromtimestamp(loaded.created, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if loaded.created > 1e9
            else f"{loaded.created:g} (clock seconds)"
        )

    def counts(c: Counter[str], order: Callable[[str], Any] = str) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(c.items(), key=lambda kv: order(kv[0])))

    rows = [
        ("protocol", loaded.protocol_name),
        ("protocol SHA-256", loaded.protocol_sha256),
        ("run", f"{loaded.run_id} (started {created})"),
        ("final state", final),
        ("protocol duration", _duration(d.end_t)),
        ("steps", f"{len(loaded.steps)}" + (f" ({counts(outcomes)})" if outcomes else "")),
        (
            "actions",
            f"{sum(loaded.action_states.values())}"
            + (f" ({counts(loaded.action_states)})" if loaded.action_states else ""),
        ),
        (
            "events",
            f"{len(d.events)}"
            + (f" ({counts(severities, lambda s: (severity_rank(s), s))})" if d.events else ""),
        ),
        ("inspections", f"{len(d.inspections)} ({len({i.cell for i in d.inspections})} cells)"),
        ("telemetry samples", f"{loaded.telemetry_rows}"),
    ]
    body = "\n".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary">\n{body}\n</table>'


def _pump_table(data: RunData) -> str:
    totals = pump_totals(data.actions)
    if not totals:
        return '<p class="nodata">no data</p>'
    rows = [
        (
            dev,
            f"{t['dispensed']:,.1f}",
            f"{t['withdrawn']:,.1f}",
            f"{t['dispensed'] - t['withdrawn']:,.1f}",
            int(t["actions"]),
            int(t["unknown"]),
        )
        for dev, t in sorted(totals.items())
    ]
    head = ("pump", "dispensed (µL)", "withdrawn (µL)", "net (µL)", "actions", "volume unknown")
    return _table(head, rows)


def _event_table(data: RunData) -> str:
    if not data.events:
        return '<p class="nodata">no data</p>'
    shown = data.events[:MAX_EVENT_ROWS]
    out = ["<table>", "<tr><th>t</th><th>severity</th><th>code</th><th>message</th></tr>"]
    for e in shown:
        known = e.severity if e.severity in ("warning", "alarm", "error", "critical") else "other"
        out.append(
            f'<tr class="sev-{known}"><td>{_esc(_clock(e.t))}</td><td>{_esc(e.severity)}</td>'
            f"<td>{_esc(e.code)}</td><td>{_esc(e.message)}</td></tr>"
        )
    out.append("</table>")
    if len(data.events) > len(shown):
        out.append(f"<p>{len(data.events) - len(shown)} more events not listed.</p>")
    return "\n".join(out)


def _transition_table(transitions: list[dict[str, Any]]) -> str:
    if not transitions:
        return '<p class="nodata">no data</p>'
    rows = [
        (
            _clock(_float(r.get("t_protocol"))),
            r["from_state"],
            r["to_state"],
            r["trigger"],
            r["reason"],
        )
        for r in transitions
    ]
    return _table(("t", "from", "to", "trigger", "reason"), rows)


def _page(loaded: _Loaded, plots: list[tuple[str, str, str | None]]) -> str:
    title = f"kiboauto run report: {loaded.protocol_name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(title)}</h1>",
        _summary(loaded),
        "<h2>Pump totals</h2>",
        _pump_table(loaded.data),
        "<h2>Plots</h2>",
    ]
    for name, heading, problem in plots:
        parts.append(f"<h3>{_esc(heading)}</h3>")
        if problem is None:
            parts.append(f'<p><img src="{_esc(name)}" alt="{_esc(heading)}"></p>')
        else:
            parts.append(f'<p class="nodata">{_esc(problem)}</p>')
    parts += [
        f"<h2>Events ({len(loaded.data.events)})</h2>",
        _event_table(loaded.data),
        "<h2>State transitions</h2>",
        _transition_table(loaded.transitions),
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------ entry points


def render_report(run_dir: Path, out_dir: Path | None = None) -> ReportFiles:
    """Render the journal of ``run_dir`` as PNG plots and ``index.html`` in ``out_dir``.

    ``out_dir`` defaults to ``run_dir/report``. Plots without data are not written (and a stale
    one of the same name from an earlier report is removed); the page says "no data" instead.
    Raises :class:`ReportError` for a missing or unusable journal or an unwritable ``out_dir``.
    """
    run_dir = Path(run_dir)
    out = run_dir / "report" if out_dir is None else Path(out_dir)
    loaded = _load(run_dir)
    tx = TimeAxis.for_span(loaded.data.end_t)
    written: list[Path] = []
    plots: list[tuple[str, str, str | None]] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, heading, draw in _PLOTS:
            target = out / name
            target.unlink(missing_ok=True)
            try:
                drawn = draw(loaded.data, tx, target)
            except (ArithmeticError, KeyError, TypeError, ValueError) as e:
                # journal content this report does not understand: say so, keep the rest
                plots.append((name, heading, f"could not draw: {type(e).__name__}: {e}"))
                continue
            plots.append((name, heading, None if drawn else "no data"))
            if drawn:
                written.append(target)
        page = out / "index.html"
        page.write_text(_page(loaded, plots), encoding="utf-8")
    except OSError as e:
        raise ReportError(run_dir, f"cannot write the report to {out}: {e}") from None
    return ReportFiles(html=page, pngs=written)


def report_main(run_dir: Path, out: Path | None) -> int:
    """The ``kiboauto report`` command: render and say where; exit 0, or 2 with the reason."""
    try:
        files = render_report(run_dir, out)
    except ReportError as e:
        print(f"kiboauto report: {e}", file=sys.stderr)
        return 2
    print(f"report written to {files.html} ({len(files.pngs)} plots)")
    return 0
