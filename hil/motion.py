"""Plunger kinematics: how far a stepper-driven plunger has moved at a given time in a move with a
trapezoidal (or triangular) speed profile. Used by the Cavro simulator."""

from __future__ import annotations

import math

__all__ = ["MoveProfile"]


class MoveProfile:
    """Speed profile of one plunger move of ``pulses`` pulses (trapezoid or triangle).

    The plunger starts at ``start`` pulses/s (at most ``top``), speeds up at ``accel`` pulses/s²
    to ``top``, runs, and slows down at the same rate to ``cutoff`` (at most ``top``) where it
    stops. A move too short to reach ``top`` peaks where the two ramps meet.
    """

    def __init__(
        self, pulses: float, start: float, top: float, cutoff: float, accel: float
    ) -> None:
        self.pulses = float(pulses)
        self.v0 = float(min(start, top))
        self.v2 = float(min(cutoff, top))
        self.accel = a = float(accel)
        p, v0, v2 = self.pulses, self.v0, self.v2
        self.linear = False
        self.peak = float(top)
        self.d_up = (top**2 - v0**2) / (2 * a)
        d_down = (top**2 - v2**2) / (2 * a)
        if p <= 0:
            self.peak = self.t_up = self.t_flat = self.t_down = self.d_up = 0.0
        elif self.d_up + d_down <= p:
            self.t_up, self.t_down = (top - v0) / a, (top - v2) / a
            self.t_flat = (p - self.d_up - d_down) / top
        else:
            peak = math.sqrt((2 * a * p + v0**2 + v2**2) / 2)
            if peak < max(v0, v2):  # too short to ramp: one straight change of speed
                self.linear = True
                self.peak = self.t_up = self.t_flat = self.d_up = 0.0
                self.t_down = 2 * p / (v0 + v2)
            else:
                self.peak = peak
                self.d_up = (peak**2 - v0**2) / (2 * a)
                self.t_up, self.t_flat, self.t_down = (peak - v0) / a, 0.0, (peak - v2) / a

    @property
    def duration(self) -> float:
        return self.t_up + self.t_flat + self.t_down

    def distance(self, t: float) -> float:
        """Pulses travelled ``t`` seconds after the start."""
        if t <= 0 or self.pulses <= 0:
            return 0.0
        if t >= self.duration:
            return self.pulses
        v0, a = self.v0, self.accel
        if self.linear:
            return v0 * t + (self.v2 - v0) / (2 * self.t_down) * t * t
        if t < self.t_up:
            return v0 * t + a * t * t / 2
        if t < self.t_up + self.t_flat:
            return self.d_up + self.peak * (t - self.t_up)
        tau = t - self.t_up - self.t_flat
        return self.d_up + self.peak * self.t_flat + self.peak * tau - a * tau * tau / 2
