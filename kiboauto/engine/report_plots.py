"""The plots of a run report: what a run's journal holds, drawn as PNG files with matplotlib.

:mod:`kiboauto.engine.report` reads the journal into a :class:`RunData` and calls the ``plot_*``
functions here; each writes one PNG and returns ``True``, or returns ``False`` without writing
anything when the run has nothing to show for it. Figures are built with
:class:`matplotlib.figure.Figure` on an Agg canvas, never through pyplot, so rendering a report
neither needs a screen nor touches the global pyplot state other code may be using. Long series
are thinned to a few thousand points (min/max per bin, so spikes survive) before drawing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kiboauto.vision import CrystalMeasure, DropInfo, Inspection, WellInfo, load_image, overlay

__all__ = [
    "Event",
    "InspectionRow",
    "Limit",
    "PumpAction",
    "RunData",
    "Series",
    "StateSpan",
    "TimeAxis",
    "crystal_stats",
    "decimate",
    "plot_confluence",
    "plot_crystals",
    "plot_events",
    "plot_mosaic",
    "plot_temperature",
    "plot_volumes",
    "pump_direction",
    "severity_rank",
]

F64 = npt.NDArray[np.float64]

MAX_POINTS = 3000
"""Most points drawn per series; longer series are thinned (min and max of each bin kept)."""

_DPI = 100
_SEVERITIES = ("debug", "info", "notice", "warning", "alarm", "error", "critical")
_SEVERITY_COLOURS = {
    "debug": "#9e9e9e",
    "info": "#1f77b4",
    "notice": "#17becf",
    "warning": "#e6a100",
    "alarm": "#d62728",
    "error": "#d62728",
    "critical": "#7b0000",
}
_STATE_COLOURS = {
    "idle": "#d9d9d9",
    "loaded": "#e8e8e8",
    "running": "#7fc97f",
    "paused": "#fdc086",
    "holding": "#c994c7",
    "completed": "#80b1d3",
    "finished": "#80b1d3",
    "done": "#80b1d3",
    "aborted": "#fb8072",
    "failed": "#fb8072",
}
_EXTRA_COLOURS = ("#bebada", "#ffffb3", "#b3de69", "#fccde5", "#bc80bd", "#ccebc5")
_TEMP_UNITS = {"degc": "C", "°c": "C", "celsius": "C", "k": "K", "kelvin": "K", "degf": "F"}
_DISPENSE = {"dispense", "infuse", "infusion"}
_WITHDRAW = {"withdraw", "withdrawal", "aspirate"}


# ------------------------------------------------------------------ what the plots draw


@dataclass(frozen=True)
class Series:
    """One numeric telemetry reading (``device.name``) over protocol time, sorted by time."""

    device: str
    name: str
    unit: str
    t: F64
    v: F64

    @property
    def key(self) -> str:
        """``device.name``, as the limits checkpoint names a reading."""
        return f"{self.device}.{self.name}"


@dataclass(frozen=True)
class Limit:
    """Yellow and red limits of one reading; ``None`` for a bound (or a whole pair) not set."""

    key: str
    unit: str
    yellow: tuple[float | None, float | None] | None
    red: tuple[float | None, float | None] | None


@dataclass(frozen=True)
class StateSpan:
    """The run was in ``state`` from ``start`` to ``end`` (protocol seconds)."""

    state: str
    start: float
    end: float


@dataclass(frozen=True)
class PumpAction:
    """One pump action: direction (``kind``), volume moved (``None`` if unknown), when it ended."""

    device: str
    kind: str
    delivered_ul: float | None
    state: str
    t: float | None
    step: str


@dataclass(frozen=True)
class Event:
    """One journaled event; ``severity`` is lower-cased."""

    code: str
    severity: str
    message: str
    t: float | None


@dataclass(frozen=True)
class InspectionRow:
    """One inspection: the cell, when, the image (relative to the run directory) and result."""

    cell: str
    t: float | None
    image_path: str
    model_version: str
    result: dict[str, Any]


@dataclass
class RunData:
    """Everything the plots need from one run's journal, in protocol seconds."""

    run_dir: Path
    end_t: float
    series: list[Series] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)
    states: list[StateSpan] = field(default_factory=list)
    actions: list[PumpAction] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    inspections: list[InspectionRow] = field(default_factory=list)


@dataclass(frozen=True)
class TimeAxis:
    """The unit of the shared time axis, chosen from the run's length."""

    seconds: float
    unit: str

    @classmethod
    def for_span(cls, span_s: float) -> TimeAxis:
        """Days beyond two days, hours beyond two hours, minutes beyond two minutes, else s."""
        if span_s >= 2 * 86400:
            return cls(86400.0, "d")
        if span_s >= 2 * 3600:
            return cls(3600.0, "h")
        if span_s >= 120:
            return cls(60.0, "min")
        return cls(1.0, "s")

    @property
    def label(self) -> str:
        """The x-axis label."""
        return f"protocol time ({self.unit})"

    def __call__(self, t: F64 | float) -> Any:
        return np.asarray(t, dtype=np.float64) / self.seconds


# ------------------------------------------------------------------ helpers


def severity_rank(severity: str) -> int:
    """Sort key of a severity: known ones in rising order, unknown ones after them."""
    s = severity.lower()
    return _SEVERITIES.index(s) if s in _SEVERITIES else len(_SEVERITIES)


def pump_direction(kind: str) -> str | None:
    """``"dispensed"``, ``"withdrawn"`` or ``None`` for an action kind that moves no liquid."""
    k = kind.lower()
    if k in _DISPENSE:
        return "dispensed"
    if k in _WITHDRAW:
        return "withdrawn"
    return None


def decimate(t: F64, v: F64, max_points: int = MAX_POINTS) -> tuple[F64, F64]:
    """At most about ``max_points`` of a series: each bin keeps its lowest and highest sample."""
    n = len(t)
    if n <= max_points:
        return t, v
    k = math.ceil(n / max(1, max_points // 2))
    m = (n // k) * k
    blocks = v[:m].reshape(-1, k)
    base = np.arange(blocks.shape[0]) * k
    keep = np.concatenate([base + blocks.argmin(axis=1), base + blocks.argmax(axis=1)])
    keep = np.unique(np.concatenate([keep, np.arange(m, n), [0, n - 1]]))
    return t[keep], v[keep]


def _changes(t: F64, v: F64) -> tuple[F64, F64]:
    """The samples where a stepwise value (a set point) changes, plus the last one."""
    if len(v) < 3:
        return t, v
    keep = np.flatnonzero(np.concatenate([[True], v[1:] != v[:-1]]))
    keep = np.unique(np.append(keep, len(v) - 1))
    return t[keep], v[keep]


def temperature_unit(unit: str) -> str | None:
    """``"C"``, ``"K"`` or ``"F"`` for a temperature unit name, ``None`` for anything else."""
    return _TEMP_UNITS.get(unit.strip().lower())


def to_celsius(values: Any, unit: str) -> Any:
    """Temperatures in ``unit`` (a name :func:`temperature_unit` knows) in degrees Celsius."""
    u = temperature_unit(unit)
    if u == "K":
        return values - 273.15
    if u == "F":
        return (values - 32.0) * 5.0 / 9.0
    return values


def _is_setpoint(name: str) -> bool:
    n = name.lower().replace("-", "_")
    return "setpoint" in n or "set_point" in n or n in ("sv", "target")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)


def state_colour(state: str) -> str:
    """The colour of a run state in every plot (a fixed palette; unknown states get extras)."""
    s = state.lower()
    if s in _STATE_COLOURS:
        return _STATE_COLOURS[s]
    if "hold" in s:
        return _STATE_COLOURS["holding"]
    return _EXTRA_COLOURS[sum(s.encode()) % len(_EXTRA_COLOURS)]


def _shade_holding(ax: Axes, data: RunData, tx: TimeAxis) -> None:
    labelled = False
    for span in data.states:
        if "hold" in span.state.lower() and span.end > span.start:
            ax.axvspan(
                float(tx(span.start)),
                float(tx(span.end)),
                color=_STATE_COLOURS["holding"],
                alpha=0.35,
                lw=0,
                label=None if labelled else "holding",
            )
            labelled = True


def _finish_time_axis(ax: Axes, data: RunData, tx: TimeAxis) -> None:
    ax.set_xlabel(tx.label)
    ax.set_xlim(0.0, max(float(tx(data.end_t)), 1e-9))
    ax.grid(True, alpha=0.3)


# ------------------------------------------------------------------ temperature


def _limit_values(limit: Limit) -> list[float]:
    out: list[float] = []
    for pair in (limit.yellow, limit.red):
        if pair is not None:
            out.extend(float(to_celsius(x, limit.unit)) for x in pair if x is not None)
    return out


def _draw_limits(ax: Axes, limits: Sequence[Limit], lo: float, hi: float) -> None:
    """Yellow and red bands outside the limits, with dashed lines on the limits themselves."""
    many = len(limits) > 1
    for limit in limits:
        suffix = f" ({limit.key})" if many else ""
        yl = (None, None) if limit.yellow is None else limit.yellow
        rd = (None, None) if limit.red is None else limit.red
        y_lo, y_hi = (None if x is None else float(to_celsius(x, limit.unit)) for x in yl)
        r_lo, r_hi = (None if x is None else float(to_celsius(x, limit.unit)) for x in rd)
        # red beyond the red limits, yellow between the yellow and the red (or the axis edge)
        if r_lo is not None and r_lo > lo:
            ax.axhspan(lo, r_lo, color="#d62728", alpha=0.12, lw=0)
        if r_hi is not None and r_hi < hi:
            ax.axhspan(r_hi, hi, color="#d62728", alpha=0.12, lw=0)
        if y_lo is not None:
            ax.axhspan(lo if r_lo is None else max(lo, r_lo), y_lo, color="#ffd700", alpha=0.18)
        if y_hi is not None:
            ax.axhspan(y_hi, hi if r_hi is None else min(hi, r_hi), color="#ffd700", alpha=0.18)
        for values, colour, name in (
            ((y_lo, y_hi), "#c89600", "yellow limit"),
            ((r_lo, r_hi), "#d62728", "red limit"),
        ):
            shown = [x for x in values if x is not None and lo <= x <= hi]
            off = [x for x in values if x is not None and not lo <= x <= hi]
            label = name + suffix
            if off:
                label += " (" + ", ".join(f"{x:g} °C" for x in off) + " off scale)"
            for i, x in enumerate(shown):
                ax.axhline(x, color=colour, ls="--", lw=1.0, label=label if i == 0 else None)
            if off and not shown:  # still say it in the legend
                ax.plot([], [], color=colour, ls="--", lw=1.0, label=label)


def plot_temperature(data: RunData, tx: TimeAxis, path: Path) -> bool:
    """Temperatures (°C) over time, set points as steps, limits as bands, holding shaded."""
    temps = [s for s in data.series if temperature_unit(s.unit) is not None and len(s.t)]
    if not temps:
        return False
    fig = _new_figure(10, 4.6)
    ax = fig.add_subplot()
    many_devices = len({s.device for s in temps}) > 1
    values: list[float] = []
    for s in sorted(temps, key=lambda s: (_is_setpoint(s.name), s.key)):
        v = np.asarray(to_celsius(s.v, s.unit), dtype=np.float64)
        label = s.key if many_devices else s.name
        if temperature_unit(s.unit) != "C":
            label += f" (from {s.unit})"
        if _is_setpoint(s.name):
            t, v = _changes(s.t, v)
            t, v = decimate(t, v)
            t, v = np.append(t, max(data.end_t, float(t[-1]))), np.append(v, v[-1])
            ax.plot(tx(t), v, drawstyle="steps-post", color="black", lw=1.2, ls="-.", label=label)
        else:
            t, v = decimate(s.t, v)
            ax.plot(tx(t), v, lw=1.0, label=label)
        values += [float(v.min()), float(v.max())]
    keys = {s.key for s in temps}
    limits = [lim for lim in data.limits if lim.key in keys or temperature_unit(lim.unit)]
    lo, hi = min(values), max(values)
    yellow = [
        x for lim in limits for x in _limit_values(Limit(lim.key, lim.unit, lim.yellow, None))
    ]
    lo, hi = min([lo, *yellow]), max([hi, *yellow])
    near = max(hi - lo, 1.0)
    for x in (x for lim in limits for x in _limit_values(lim)):
        if lo - 2 * near <= x <= hi + 2 * near:  # a red limit far away would flatten the data
            lo, hi = min(lo, x), max(hi, x)
    pad = max(0.08 * (hi - lo), 0.25)
    lo, hi = lo - pad, hi + pad
    ax.set_ylim(lo, hi)
    _draw_limits(ax, limits, lo, hi)
    _shade_holding(ax, data, tx)
    ax.set_ylabel("temperature (°C)")
    ax.set_title("Temperature")
    _finish_time_axis(ax, data, tx)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    _save(fig, path)
    return True


# ------------------------------------------------------------------ volumes


def pump_totals(actions: Iterable[PumpAction]) -> dict[str, dict[str, float]]:
    """Per pump: ``dispensed`` and ``withdrawn`` µL, ``actions`` and ``unknown`` (no volume)."""
    totals: dict[str, dict[str, float]] = {}
    for a in actions:
        direction = pump_direction(a.kind)
        if direction is None:
            continue
        row = totals.setdefault(
            a.device, {"dispensed": 0.0, "withdrawn": 0.0, "actions": 0, "unknown": 0}
        )
        row["actions"] += 1
        if a.delivered_ul is None:
            row["unknown"] += 1
        else:
            row[direction] += a.delivered_ul
    return totals


def plot_volumes(data: RunData, tx: TimeAxis, path: Path) -> bool:
    """Cumulative µL dispensed (solid) and withdrawn (dashed) per pump, totals in the legend."""
    moves = [a for a in data.actions if pump_direction(a.kind) is not None and a.t is not None]
    if not moves:
        return False
    fig = _new_figure(10, 4.2)
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    unknown_labelled = False
    for i, device in enumerate(sorted({a.device for a in moves})):
        colour = colours[i % len(colours)]
        mine = sorted((a for a in moves if a.device == device), key=lambda a: a.t or 0.0)
        for direction, style in (("dispensed", "-"), ("withdrawn", "--")):
            rows = [a for a in mine if pump_direction(a.kind) == direction]
            if not rows:
                continue
            t = np.array([0.0] + [a.t or 0.0 for a in rows] + [data.end_t])
            step = np.array([0.0] + [a.delivered_ul or 0.0 for a in rows] + [0.0])
            total = np.cumsum(step)
            t, total = decimate(t, total)
            ax.plot(
                tx(t),
                total,
                drawstyle="steps-post",
                color=colour,
                ls=style,
                lw=1.4,
                label=f"{device} {direction}: {total[-1]:,.1f} µL",
            )
            lost = [
                (a.t or 0.0, np.cumsum(step)[k + 1])
                for k, a in enumerate(rows)
                if a.delivered_ul is None
            ]
            if lost:
                ax.plot(
                    tx(np.array([p[0] for p in lost])),
                    [p[1] for p in lost],
                    "x",
                    color="#d62728",
                    ms=8,
                    mew=2,
                    label=None if unknown_labelled else "volume unknown (lost/open)",
                )
                unknown_labelled = True
    ax.set_ylabel("cumulative volume (µL)")
    ax.set_title("Pump volumes (cumulative)")
    ax.set_ylim(bottom=0)
    _finish_time_axis(ax, data, tx)
    ax.legend(loc="upper left", fontsize="small")
    _save(fig, path)
    return True


# ------------------------------------------------------------------ events and states


def _draw_states(ax: Axes, data: RunData, tx: TimeAxis) -> None:
    seen: dict[str, str] = {}
    for span in data.states:
        colour = state_colour(span.state)
        width = float(tx(span.end - span.start))
        ax.broken_barh(
            [(float(tx(span.start)), width)],
            (0, 1),
            facecolors=colour,
            label=None if span.state in seen else span.state,
        )
        seen[span.state] = colour
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    ax.set_ylabel("state", rotation=0, ha="right", va="center")
    if seen:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.2), fontsize="small", frameon=False)


def plot_events(data: RunData, tx: TimeAxis, path: Path) -> bool:
    """Events on the time axis, one row per severity, under a strip of the run's states."""
    events = [e for e in data.events if e.t is not None]
    if not events and not data.states:
        return False
    severities = sorted({e.severity for e in events}, key=lambda s: (severity_rank(s), s))
    fig = _new_figure(10, 2.0 + 0.45 * max(len(severities), 2))
    top, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, max(len(severities), 2) * 1.2])
    _draw_states(top, data, tx)
    top.set_title("Events and run states")
    for row, sev in enumerate(severities):
        ts = np.array([e.t for e in events if e.severity == sev], dtype=np.float64)
        colour = _SEVERITY_COLOURS.get(sev, "#555555")
        ax.scatter(
            tx(ts),
            np.full(len(ts), row),
            s=36,
            color=colour,
            edgecolors="black",
            linewidths=0.4,
            zorder=3,
            clip_on=False,
        )
    alarm = _SEVERITIES.index("alarm")
    serious = [e for e in events if alarm <= severity_rank(e.severity) < len(_SEVERITIES)]
    if 0 < len(serious) <= 12:  # name the few serious ones; more would be unreadable
        for e in serious:
            ax.annotate(
                e.code[:24],
                (float(tx(e.t or 0.0)), severities.index(e.severity)),
                xytext=(4, 6),
                textcoords="offset points",
                fontsize=7,
                rotation=25,
            )
    counts = Counter(e.severity for e in events)
    ax.set_yticks(range(len(severities)), [f"{s} ({counts[s]})" for s in severities])
    ax.set_ylim(-0.7, max(len(severities), 2) - 0.3)
    ax.set_ylabel("severity")
    if not events:
        ax.text(0.5, 0.5, "no events", ha="center", va="center", transform=ax.transAxes)
    _finish_time_axis(ax, data, tx)
    _save(fig, path)
    return True


# ------------------------------------------------------------------ inspections


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def crystal_stats(result: dict[str, Any]) -> tuple[int, float] | None:
    """Crystal count and largest length (µm) of a drop inspection result; ``None`` otherwise."""
    crystals = result.get("crystals")
    crystals = crystals if isinstance(crystals, list) else None
    count = _number(result.get("count"))
    if count is None and crystals is None:
        return None
    lengths = [
        x
        for c in crystals or []
        if isinstance(c, dict) and (x := _number(c.get("length_um"))) is not None
    ]
    longest = _number(result.get("max_length_um"))
    if longest is None:
        longest = max(lengths, default=0.0)
    return (int(count) if count is not None else len(crystals or [])), longest


def confluence_value(result: dict[str, Any]) -> float | None:
    """Confluence of a cell-culture result in percent (a fraction 0..1 is scaled), or ``None``."""
    value = _number(result.get("confluence"))
    if value is None:
        return None
    return value * 100.0 if value <= 1.0 else value


def _line_style(i: int, label: str) -> dict[str, Any]:
    """Colour, then marker and dash, vary with ``i``: beyond ten cells lines stay distinct."""
    return {
        "color": f"C{i % 10}",
        "marker": "osD^v"[(i // 10) % 5],
        "ls": ("-", "--", ":")[(i // 10) % 3],
        "ms": 3.5,
        "lw": 1.2,
        "label": label,
        "clip_on": False,
    }


def _label_cell(cell: str, result: dict[str, Any]) -> str:
    fld = result.get("field")
    return cell if fld is None else f"{cell} field {fld}"


def plot_crystals(data: RunData, tx: TimeAxis, path: Path) -> bool:
    """Per growth cell: crystal count (top) and largest crystal length in µm (bottom)."""
    per_cell: dict[str, list[tuple[float, int, float]]] = {}
    for ins in data.inspections:
        stats = crystal_stats(ins.result)
        if stats is not None and ins.t is not None:
            per_cell.setdefault(ins.cell, []).append((ins.t, *stats))
    if not per_cell:
        return False
    fig = _new_figure(10, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for i, cell in enumerate(sorted(per_cell)):
        pts = sorted(per_cell[cell])
        t = tx(np.array([p[0] for p in pts]))
        style = _line_style(i, cell)
        top.plot(t, [p[1] for p in pts], **style)
        bottom.plot(t, [p[2] for p in pts], **style)
    most = max(p[1] for pts in per_cell.values() for p in pts)
    top.set_ylabel("crystals (count)")
    top.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylim(0, most * 1.1 + 0.5)
    top.set_title("Crystals per growth cell")
    top.grid(True, alpha=0.3)
    bottom.set_ylabel("largest crystal (µm)")
    bottom.set_ylim(bottom=0)
    _finish_time_axis(bottom, data, tx)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    _save(fig, path)
    return True


def plot_confluence(data: RunData, tx: TimeAxis, path: Path) -> bool:
    """Confluence (% of the field covered by cells) over time, one line per cell/field."""
    per: dict[str, list[tuple[float, float]]] = {}
    for ins in data.inspections:
        value = confluence_value(ins.result)
        if value is not None and ins.t is not None:
            per.setdefault(_label_cell(ins.cell, ins.result), []).append((ins.t, value))
    if not per:
        return False
    fig = _new_figure(10, 4.2)
    ax = fig.add_subplot()
    for i, label in enumerate(sorted(per)):
        pts = sorted(per[label])
        ax.plot(tx(np.array([p[0] for p in pts])), [p[1] for p in pts], **_line_style(i, label))
    ax.set_ylabel("confluence (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Cell confluence")
    _finish_time_axis(ax, data, tx)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    _save(fig, path)
    return True


# ------------------------------------------------------------------ the mosaic of last images


def _xy(value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"expected a point [x, y], got {value!r}")
    return float(value[0]), float(value[1])


def _box(value: Any) -> tuple[int, int, int, int]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ValueError(f"expected a box [x, y, w, h], got {value!r}")
    return int(value[0]), int(value[1]), int(value[2]), int(value[3])


def inspection_from_dict(result: dict[str, Any]) -> Inspection:
    """Rebuild a vision :class:`~kiboauto.vision.Inspection` from its ``to_dict()`` form.

    Raises ``KeyError``, ``TypeError`` or ``ValueError`` for a dict of another shape.
    """
    crystals = [
        CrystalMeasure(
            id=int(c["id"]),
            centroid_px=_xy(c["centroid_px"]),
            bbox_px=_box(c["bbox_px"]),
            area_px=float(c["area_px"]),
            area_um2=float(c["area_um2"]),
            length_um=float(c["length_um"]),
            aspect=float(c["aspect"]),
            straightness=float(c["straightness"]),
        )
        for c in result["crystals"]
    ]
    well, drop = result.get("well"), result.get("drop")
    return Inspection(
        drop_class=str(result["drop_class"]),
        confidence=float(result["confidence"]),
        crystals=crystals,
        well=WellInfo(_xy(well["center_px"]), float(well["radius_px"])) if well else None,
        drop=DropInfo(
            bbox_px=_box(drop["bbox_px"]),
            area_px=float(drop["area_px"]),
            centroid_px=_xy(drop["centroid_px"]),
            contour_px=tuple((int(p[0]), int(p[1])) for p in drop.get("contour_px") or ()),
        )
        if drop
        else None,
        features={str(k): float(v) for k, v in (result.get("features") or {}).items()},
    )


def _to_bgr8(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    img = image
    if img.dtype != np.uint8:
        top = float(np.percentile(img[::4, ::4], 99.5)) or 1.0
        img = cv2.convertScaleAbs(img, alpha=230.0 / top)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.asarray(img, dtype=np.uint8)


def _draw_by_hand(image: npt.NDArray[Any], result: dict[str, Any]) -> npt.NDArray[np.uint8]:
    """The drop contour and crystal boxes straight from the dict, when it is not an Inspection."""
    out = _to_bgr8(image).copy()
    thick = max(1, round(min(out.shape[:2]) / 480))
    drop = result.get("drop")
    if isinstance(drop, dict) and drop.get("contour_px"):
        try:
            pts = np.array(drop["contour_px"], dtype=np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [pts], True, (0, 200, 0), thick, cv2.LINE_AA)
        except (TypeError, ValueError):
            pass
    for c in result.get("crystals") or []:
        try:
            x, y, w, h = (int(v) for v in c["bbox_px"])
        except (KeyError, TypeError, ValueError):
            continue
        cv2.rectangle(out, (x - 2, y - 2), (x + w + 2, y + h + 2), (0, 0, 255), thick)
    return out


def _tile_image(run_dir: Path, ins: InspectionRow) -> npt.NDArray[np.uint8] | str:
    """The annotated RGB tile of an inspection, or why there is none."""
    path = Path(ins.image_path)
    path = path if path.is_absolute() else run_dir / path
    if not path.is_file():
        return "image missing"
    try:
        image = load_image(path)
    except ValueError as e:  # ImageError: corrupt, unsupported, too large
        return f"image unreadable: {getattr(e, 'reason', e)}"
    if crystal_stats(ins.result) is not None:
        try:
            bgr = overlay(image, inspection_from_dict(ins.result))
        except (KeyError, TypeError, ValueError, AttributeError):
            bgr = _draw_by_hand(image, ins.result)
    else:
        bgr = _to_bgr8(image)
    h, w = bgr.shape[:2]
    scale = 480.0 / max(h, w)
    if scale < 1.0:
        bgr = np.asarray(
            cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA),
            dtype=np.uint8,
        )
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _tile_title(ins: InspectionRow, tx: TimeAxis) -> str:
    when = "" if ins.t is None else f"  t = {float(tx(ins.t)):.1f} {tx.unit}"
    lines = [f"{_label_cell(ins.cell, ins.result)}{when}"]
    stats = crystal_stats(ins.result)
    if stats is not None:
        cls = str(ins.result.get("drop_class", "?"))
        conf = _number(ins.result.get("confidence"))
        lines.append(cls + ("" if conf is None else f" ({conf:.2f})"))
        noun = "crystal" if stats[0] == 1 else "crystals"
        lines.append(f"{stats[0]} {noun}, max {stats[1]:.0f} µm")
    conf_pct = confluence_value(ins.result)
    if conf_pct is not None:
        lines.append(f"confluence {conf_pct:.0f} %")
    return "\n".join(lines)


def plot_mosaic(data: RunData, tx: TimeAxis, path: Path, max_tiles: int = 36) -> bool:
    """The last image of each cell with its overlay, in a grid titled with what was found."""
    last: dict[str, InspectionRow] = {}
    for ins in data.inspections:  # oldest first: the last one per cell wins
        key = _label_cell(ins.cell, ins.result)
        if key not in last or (ins.t or 0.0) >= (last[key].t or 0.0):
            last[key] = ins
    if not last:
        return False
    tiles = [last[k] for k in sorted(last)][:max_tiles]
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = _new_figure(3.4 * cols, 3.3 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, ins in zip(axes, tiles, strict=False):
        tile = _tile_image(data.run_dir, ins)
        if isinstance(tile, str):
            ax.set_facecolor("#eeeeee")
            ax.text(
                0.5,
                0.5,
                f"{tile}\n{ins.image_path}",
                ha="center",
                va="center",
                fontsize=8,
                wrap=True,
                transform=ax.transAxes,
            )
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.imshow(tile)
            ax.set_axis_off()
        ax.set_title(_tile_title(ins, tx), fontsize=8.5)
    for ax in axes[len(tiles) :]:
        ax.set_axis_off()
    more = len(last) - len(tiles)
    fig.suptitle(
        "Last image of each cell" + (f" (first {len(tiles)}, {more} more)" if more else "")
    )
    _save(fig, path)
    return True
