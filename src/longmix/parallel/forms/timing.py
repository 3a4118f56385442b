"""A form's predicted time: calibrated compute plus the wire, so the planner can choose by time.

Bytes alone choose badly: on a few local ranks the shuffle trains mamba faster than state
passing, which sends less, because state passing runs extra summary passes. The model, for one
layer's training step (forward and backward) on the busiest rank:

    time = (fixed + rate * work(L, P)) * contention(P)  +  bytes / bandwidth  +  messages * latency

* ``work(L, P) = growth(L) / P``, with ``growth`` read off the mixer's taxonomy (``"O(L)"`` -> L,
  ``"O(L log L)"`` -> L log2 L, ``"O(L^2)"`` -> L^2): every form divides the work by P.
* ``fixed`` and ``rate`` are calibrated per (mixer, form, P): measured steps of that form on P
  ranks at a few lengths (near those to be predicted: a line through short steps misses when
  extrapolated far, ``benchmarks/results/planner_time_calib_short.md``), their predicted wire time
  taken off, fitted as a line in the work (:meth:`StepTiming.calibrate`): ``rate`` carries what
  the form costs beyond the mixer itself (state passing's summary passes, the shuffle's
  regrouping), ``fixed`` what a step costs at any length (kernel launches, Python). One point
  gives ``fixed = 0``.
* Calibrate at the P you will run. A P that was not calibrated is predicted from the nearest one
  that was, scaled by the work and by ``contention(P) = max(1, P * threads / cores)`` (ranks that
  share cores share their time); but one P's line cannot tell a real fixed cost from a curve's
  intercept, and contention charges the two differently: fitted at P = 2 only, gated_deltanet's
  shuffle at P = 4 was predicted 45% slow on a 2-core machine
  (``benchmarks/results/planner_time_one_world.md``).
* ``bytes`` is the planner's own prediction (``FormCost``), the same arithmetic the tests hold to
  ``CommStats``; ``bandwidth`` and ``latency`` are measured (``longmix.parallel.measure_rates``).
* ``messages``: the collectives one step makes, forward and backward (:data:`MESSAGES`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .cost import FormCost

#: Collectives in one training step of a layer (forward + backward), per form, as a function of
#: P: the shuffle's two all-to-alls each way; state passing's all-gather each way; the ring's
#: P - 1 K/V steps forward and P - 1 key-gradient steps back.
MESSAGES = {"shuffle": lambda p: 4, "state": lambda p: 2, "ring": lambda p: 2 * (p - 1)}


def growth(time_complexity: str, length: int) -> float:
    """The mixer's work at ``length`` up to a constant, from its taxonomy's cost ("O(L)", ...)."""
    cost = time_complexity.replace(" ", "")
    if "L^2" in cost or "L²" in cost:
        return float(length) ** 2
    if "logL" in cost:
        return length * math.log2(max(length, 2))
    return float(length)  # O(L), O(L k), O(L h), O(L m): linear in L at fixed options


def contention(world: int, threads: int, cores: int) -> float:
    """How much slower each rank computes when P ranks of ``threads`` threads share ``cores``."""
    return max(1.0, world * threads / cores)


def wire_seconds(cost: FormCost, world: int, bandwidth_bytes_per_s: float, latency_s: float) -> float | None:
    """The busiest rank's time on the wire for one step; None if the form's bytes are unpredicted."""
    if cost.forward_bytes is None or cost.backward_bytes is None:
        return None
    sent = max(f + b for f, b in zip(cost.forward_bytes, cost.backward_bytes))
    return sent / bandwidth_bytes_per_s + MESSAGES[cost.form](world) * latency_s


@dataclass
class StepTiming:
    """Calibrated (fixed seconds, seconds per unit of work) per (mixer name, form, world size),
    the machine's link, and its cores; ``measured`` keeps the (length, seconds) steps each fit
    went through."""

    bandwidth_bytes_per_s: float
    latency_s: float
    cores: int
    threads: int = 1
    rates: dict[tuple[str, str, int], tuple[float, float]] = field(default_factory=dict)
    measured: dict[tuple[str, str, int], list[tuple[int, float]]] = field(default_factory=dict)

    def _work(self, time_complexity: str, length: int, world: int) -> float:
        return growth(time_complexity, length) / world

    def calibrate(self, mixer: str, points: list[tuple[FormCost, str, int, int, float]]) -> tuple[float, float]:
        """Fit rates[mixer, form, world] from measured steps of one form on one world size, each
        ``(cost, time_complexity, length, world, measured_s)``: compute (the measured time less
        the predicted wire, per contention) = fixed + rate * work, least squares; a negative
        intercept (noise) refits through the origin."""
        forms = {cost.form for cost, *_ in points}
        worlds = {point[3] for point in points}
        if len(forms) != 1 or len(worlds) != 1:
            raise ValueError(f"calibrate: points must be measurements of one form on one world size, "
                             f"got forms {sorted(forms)} and worlds {sorted(worlds)}")
        work, compute = [], []
        for cost, complexity, length, world, measured in points:
            wire = wire_seconds(cost, world, self.bandwidth_bytes_per_s, self.latency_s) or 0.0
            share = contention(world, self.threads, self.cores)
            work.append(self._work(complexity, length, world))
            compute.append(max(measured - wire, 0.1 * measured) / share)  # never below a tenth
        fixed, rate = _line(work, compute)
        key = (mixer, forms.pop(), worlds.pop())
        self.rates[key] = (fixed, rate)
        self.measured[key] = [(length, measured) for _, _, length, _, measured in points]
        return fixed, rate

    def calibrated_world(self, mixer: str, form: str, world: int) -> int | None:
        """The world size whose fit predicts ``world``: itself if calibrated, else the nearest
        calibrated one by ratio (the larger on a tie); None if the form is not calibrated."""
        worlds = [w for (m, f, w) in self.rates if (m, f) == (mixer, form)]
        if not worlds:
            return None
        return min(worlds, key=lambda w: (abs(math.log(w / world)), -w))

    def predict(self, mixer: str, cost: FormCost, time_complexity: str, length: int,
                world: int) -> float | None:
        """Predicted seconds of one training step of ``cost.form`` on ``world`` ranks; None if the
        form is not calibrated or its bytes are not predicted."""
        fitted_at = self.calibrated_world(mixer, cost.form, world)
        wire = wire_seconds(cost, world, self.bandwidth_bytes_per_s, self.latency_s)
        if fitted_at is None or wire is None or not cost.feasible:
            return None
        fixed, rate = self.rates[(mixer, cost.form, fitted_at)]
        share = contention(world, self.threads, self.cores)
        return (fixed + rate * self._work(time_complexity, length, world)) * share + wire


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """(intercept, slope) of y on x by least squares, the intercept kept >= 0; one point, or
    points at one x, go through the origin."""
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    spread = sum((a - mean_x) ** 2 for a in x)
    if spread > 0:
        slope = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / spread
        intercept = mean_y - slope * mean_x
        if intercept >= 0 and slope > 0:
            return intercept, slope
    return 0.0, sum(a * b for a, b in zip(x, y)) / sum(a * a for a in x)
