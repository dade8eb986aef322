"""Crystal nucleation and growth in a growth cell, driven by a temperature history.

A deliberately small, documented model (docs/hil-camera.md has the equations):

* Two Arrhenius factors relative to ``t_ref_c`` (20 degC):
  ``k_n(T) = exp(-Ea_n / R * (1/T - 1/T_ref))`` for nucleation and ``k_g(T)`` (with ``Ea_g``) for
  growth. At 4 degC, ``k_g`` is about 0.12 and ``k_n`` about 0.06 with the default energies.
* Effective ("20 degC-equivalent") times since mixing: ``tau_n(t) = int k_n(T(s)) ds`` and
  ``tau_g(t) = int k_g(T(s)) ds`` from the mixing time to ``t``.
* Nucleation is a Poisson process in ``tau_n`` that starts after an induction time ``t_ind`` and
  fades as the drop is depleted: rate ``lambda0 * exp(-(tau_n - t_ind) / tau_dep)``. Its arrival
  times come from unit-rate arrivals ``E_k`` (drawn from the seed) through the inverse cumulative
  rate: ``theta_k = t_ind - tau_dep * ln(1 - E_k / (lambda0 * tau_dep))`` when
  ``E_k < lambda0 * tau_dep`` (otherwise crystal ``k`` never forms).
* Each crystal grows linearly, then saturates: with ``g = tau_g(t) - tau_g(t_nuc)``,
  ``L(t) = L_max * (1 - exp(-v0 * g / L_max))`` (initial rate ``v0`` at 20 degC).

Everything a cell draws comes from its seed, so a cell is reproducible; the temperature history is
a constant, a callable ``T(t)`` (degC at clock time ``t``), a list of ``(t, T)`` steps
(piecewise constant from each ``t``) or a :class:`TemperatureLog` (samples of a live simulator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from kiboauto.clock import Clock

__all__ = [
    "GAS_CONSTANT",
    "CellOutcome",
    "CrystalPlan",
    "GrowthCell",
    "GrowthParams",
    "TemperatureHistory",
    "TemperatureLog",
    "arrhenius",
    "effective_times",
]

GAS_CONSTANT = 8.314462618  # J / (mol K)

CellOutcome = Literal["crystals", "precipitate", "clear"]

FloatArray = npt.NDArray[np.float64]


def arrhenius(temp_c: float | FloatArray, ea_kj_mol: float, t_ref_c: float = 20.0) -> Any:
    """Rate factor relative to ``t_ref_c``: 1 at the reference, < 1 colder, > 1 warmer."""
    t_k = np.asarray(temp_c, dtype=np.float64) + 273.15
    return np.exp(-ea_kj_mol * 1e3 / GAS_CONSTANT * (1.0 / t_k - 1.0 / (t_ref_c + 273.15)))


class TemperatureLog:
    """A temperature history recorded from a live source that only knows "now".

    ``read()`` returns degC at the clock's present (e.g. ``ThermalSim.temperature``). Each
    :meth:`sample` appends ``(clock.now(), read())``; :meth:`run` samples every ``period_s`` of
    clock time until cancelled. As a history it is piecewise constant: the value of a sample holds
    until the next one (before the first sample, the first value).
    """

    def __init__(self, read: Callable[[], float], clock: Clock, *, period_s: float = 300.0) -> None:
        if not period_s > 0:
            raise ValueError("period_s must be > 0")
        self.read = read
        self.clock = clock
        self.period_s = float(period_s)
        self.samples: list[tuple[float, float]] = []

    def sample(self) -> float:
        now = self.clock.now()
        value = float(self.read())
        if self.samples and self.samples[-1][0] >= now:
            self.samples[-1] = (self.samples[-1][0], value)
        else:
            self.samples.append((now, value))
        return value

    async def run(self) -> None:
        """Sample forever (cancel the task to stop)."""
        while True:
            self.sample()
            await self.clock.sleep(self.period_s)

    def __call__(self, t: float) -> float:
        if not self.samples:
            return float(self.read())
        i = int(np.searchsorted([s[0] for s in self.samples], t, side="right")) - 1
        return self.samples[max(i, 0)][1]


#: a temperature history: constant degC, T(t) callable, (t, degC) steps, or a TemperatureLog
TemperatureHistory: TypeAlias = (
    float | int | Callable[[float], float] | Sequence[tuple[float, float]] | TemperatureLog
)


def _steps(history: TemperatureHistory, t0: float, t1: float) -> tuple[FloatArray, FloatArray]:
    """Grid ``ts`` (len n+1) from t0 to t1 and the temperature on each of its n intervals."""
    if t1 <= t0:
        return np.array([t0], dtype=np.float64), np.zeros(0, dtype=np.float64)
    if isinstance(history, int | float):
        return np.array([t0, t1], dtype=np.float64), np.array([float(history)])
    if isinstance(history, TemperatureLog):
        steps = history.samples or [(t0, float(history.read()))]
        return _piecewise(steps, t0, t1)
    if callable(history):
        n = int(min(20000, max(1, math.ceil((t1 - t0) / 300.0))))
        ts = np.linspace(t0, t1, n + 1)
        mids = 0.5 * (ts[:-1] + ts[1:])
        return ts, np.array([float(history(float(m))) for m in mids], dtype=np.float64)
    return _piecewise(list(history), t0, t1)


def _piecewise(
    steps: list[tuple[float, float]], t0: float, t1: float
) -> tuple[FloatArray, FloatArray]:
    if not steps:
        raise ValueError("a temperature history needs at least one (t, degC) step")
    steps = sorted((float(t), float(v)) for t, v in steps)
    times = [t0] + [t for t, _ in steps if t0 < t < t1] + [t1]
    ts = np.array(times, dtype=np.float64)
    starts = np.array([t for t, _ in steps])
    values = np.array([v for _, v in steps])
    idx = np.searchsorted(starts, ts[:-1], side="right") - 1
    return ts, values[np.clip(idx, 0, len(values) - 1)]


def effective_times(
    history: TemperatureHistory, t0: float, t1: float, ea_kj_mol: float, t_ref_c: float = 20.0
) -> tuple[FloatArray, FloatArray]:
    """Clock times ``ts`` and the cumulative effective time ``tau(ts)`` (s) from ``t0``."""
    ts, temps = _steps(history, t0, t1)
    rates = arrhenius(temps, ea_kj_mol, t_ref_c) if len(temps) else temps
    tau = np.concatenate([[0.0], np.cumsum(rates * np.diff(ts))])
    return ts, tau


@dataclass(frozen=True)
class GrowthParams:
    """Model parameters (rates at ``t_ref_c``; ranges are drawn per cell or per crystal)."""

    t_ref_c: float = 20.0
    growth_ea_kj_mol: float = 90.0  # k_g(4 degC) ~ 0.12
    nucleation_ea_kj_mol: float = 120.0  # k_n(4 degC) ~ 0.06
    induction_h: tuple[float, float] = (2.0, 12.0)
    nucleation_rate_per_h: tuple[float, float] = (0.3, 1.5)  # lambda0
    depletion_h: float = 24.0  # tau_dep
    max_crystals: int = 8
    growth_um_per_h: tuple[float, float] = (4.0, 15.0)  # v0
    final_um: tuple[float, float] = (80.0, 300.0)  # L_max
    precipitate_max: tuple[float, float] = (0.4, 1.0)
    precipitate_h: float = 6.0  # effective time constant of precipitate formation


@dataclass(frozen=True)
class CrystalPlan:
    """One potential crystal of a cell (what the seed fixed about it)."""

    index: int
    habit: str
    theta_s: float  # effective nucleation time (s of 20 degC-equivalent time); inf: never
    growth_um_per_s: float  # v0
    final_um: float  # L_max

    def size_um(self, growth_s: float) -> float:
        """Size after ``growth_s`` effective seconds of growth."""
        if growth_s <= 0 or not math.isfinite(self.theta_s):
            return 0.0
        return self.final_um * -math.expm1(-self.growth_um_per_s * growth_s / self.final_um)


@dataclass
class GrowthCell:
    """One growth cell: a drop mixed at ``mixed_at_s`` whose crystals appear and grow.

    ``outcome`` (None: drawn from the seed, 60 % crystals, 20 % precipitate, 20 % clear).
    """

    seed: int
    mixed_at_s: float = 0.0
    params: GrowthParams = field(default_factory=GrowthParams)
    outcome: CellOutcome | None = None
    habits: tuple[str, ...] | None = None
    width: int = 1280
    height: int = 960
    um_per_px: float = 2.0
    scene: dict[str, Any] = field(default_factory=dict)  # extra SceneSpec fields

    def __post_init__(self) -> None:
        p = self.params
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, 0x6A0])
        draw = rng.uniform(0, 1)
        if self.outcome is None:
            self.outcome = "crystals" if draw < 0.6 else "precipitate" if draw < 0.8 else "clear"
        all_habits = ("plate", "needle", "cube", "cluster")
        if self.habits is None:
            main = all_habits[int(rng.integers(0, 4))]
            second = all_habits[int(rng.integers(0, 4))]
            self.habits = (main, main, main, second)
        self.induction_s = rng.uniform(*p.induction_h) * 3600.0
        self.rate_per_s = rng.uniform(*p.nucleation_rate_per_h) / 3600.0
        tau_dep = p.depletion_h * 3600.0
        budget = self.rate_per_s * tau_dep  # expected number of crystals ever
        arrivals = np.cumsum(rng.exponential(1.0, p.max_crystals))
        self.plans: list[CrystalPlan] = []
        for k in range(p.max_crystals):
            e = float(arrivals[k])
            if self.outcome == "crystals" and (e < budget or k == 0):
                e = min(e, 0.999 * budget) if k == 0 else e  # a crystals cell gets at least one
                theta = self.induction_s - tau_dep * math.log1p(-e / budget)
            else:
                theta = math.inf
            self.plans.append(
                CrystalPlan(
                    index=k,
                    habit=str(self.habits[int(rng.integers(0, len(self.habits)))]),
                    theta_s=theta,
                    growth_um_per_s=rng.uniform(*p.growth_um_per_h) / 3600.0,
                    final_um=rng.uniform(*p.final_um),
                )
            )
        self.precipitate_max = rng.uniform(*p.precipitate_max)

    # -- the model at clock time t -----------------------------------------------------------
    def _clock_grid(self, t: float, history: TemperatureHistory) -> tuple[FloatArray, ...]:
        p = self.params
        ts, tau_n = effective_times(history, self.mixed_at_s, t, p.nucleation_ea_kj_mol, p.t_ref_c)
        _, tau_g = effective_times(history, self.mixed_at_s, t, p.growth_ea_kj_mol, p.t_ref_c)
        if len(tau_g) != len(tau_n):  # same grid by construction; guard anyway
            raise RuntimeError("temperature grid mismatch")
        return ts, tau_n, tau_g

    def nucleation_times(self, t: float, history: TemperatureHistory = 20.0) -> list[float | None]:
        """Clock time each potential crystal nucleated by ``t`` (None: not yet, or never)."""
        ts, tau_n, _ = self._clock_grid(t, history)
        out: list[float | None] = []
        for plan in self.plans:
            if not math.isfinite(plan.theta_s) or t <= self.mixed_at_s or tau_n[-1] < plan.theta_s:
                out.append(None)
            else:
                out.append(float(np.interp(plan.theta_s, tau_n, ts)))
        return out

    def sizes_um(self, t: float, history: TemperatureHistory = 20.0) -> list[float]:
        """Each potential crystal's size (longest 3-D dimension, um) at clock time ``t``."""
        _, tau_n, tau_g = self._clock_grid(t, history)
        sizes = []
        for plan in self.plans:
            if not math.isfinite(plan.theta_s) or t <= self.mixed_at_s or tau_n[-1] < plan.theta_s:
                sizes.append(0.0)
                continue
            g_at_nuc = float(np.interp(plan.theta_s, tau_n, tau_g))
            sizes.append(plan.size_um(float(tau_g[-1]) - g_at_nuc))
        return sizes

    def precipitate(self, t: float, history: TemperatureHistory = 20.0) -> float:
        """Precipitate amount (0..1) at ``t``: only in precipitate cells, after the induction."""
        if self.outcome != "precipitate" or t <= self.mixed_at_s:
            return 0.0
        _, tau_g = effective_times(
            history, self.mixed_at_s, t, self.params.growth_ea_kj_mol, self.params.t_ref_c
        )
        g = float(tau_g[-1]) - 0.25 * self.induction_s
        if g <= 0:
            return 0.0
        return float(self.precipitate_max * -math.expm1(-g / (self.params.precipitate_h * 3600)))

    def spec(
        self, t: float, history: TemperatureHistory = 20.0, *, noise_seed: int | None = None
    ) -> Any:
        """The :class:`~kiboauto.hil.scene.SceneSpec` of this cell at clock time ``t``."""
        from .scene import SceneSpec

        sizes = self.sizes_um(t, history)
        finals = [p.final_um for p in self.plans]
        extra = dict(self.scene)
        return SceneSpec(
            width=self.width,
            height=self.height,
            um_per_px=self.um_per_px,
            seed=int(self.seed),
            drop_class="crystals" if self.outcome == "crystals" else self.outcome or "clear",
            crystal_sizes_um=tuple(sizes),
            crystal_habits=tuple(p.habit for p in self.plans),
            size_range_um=(min(finals), max(finals)),
            crystal_max_um=tuple(finals),
            precipitate=self.precipitate(t, history),
            noise_seed=noise_seed,
            **extra,
        )
