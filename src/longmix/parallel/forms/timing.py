"""A form's predicted time: calibrated compute plus the wire, so the planner can choose by time.

Bytes alone choose badly: on a few local ranks the shuffle trains mamba faster than state
passing, which sends less, because state passing runs extra summary passes. The model, for one
layer's training step (forward and backward) on the busiest rank:

    time = rate[mixer, form] * work(L, P) * contention(P)  +  bytes / bandwidth  +  messages * latency

* ``work(L, P) = growth(L) / P``, with ``growth`` read off the mixer's taxonomy (``"O(L)"`` -> L,
  ``"O(L log L)"`` -> L log2 L, ``"O(L^2)"`` -> L^2): every form divides the work by P.
* ``rate`` is calibrated: one measured step of that form at a small (L0, P0), its predicted wire
  time taken off, divided by its work (:func:`calibrate_rate`). It carries what the form costs
  beyond the mixer itself (state passing's summary passes, the shuffle's regrouping).
* ``contention(P) = max(1, P * threads / cores)``: ranks that share cores share their time.
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
    """Calibrated rates (seconds per unit of work) per (mixer name, form), and the machine."""

    bandwidth_bytes_per_s: float
    latency_s: float
    cores: int
    threads: int = 1
    rates: dict[tuple[str, str], float] = field(default_factory=dict)

    def calibrate_rate(self, mixer: str, cost: FormCost, time_complexity: str, length: int,
                       world: int, measured_s: float) -> float:
        """Set rate[mixer, form] from one measured step of ``cost.form`` at (length, world)."""
        wire = wire_seconds(cost, world, self.bandwidth_bytes_per_s, self.latency_s) or 0.0
        compute = max(measured_s - wire, 0.1 * measured_s)  # never below a tenth: noise, not 0
        work = growth(time_complexity, length) / world * contention(world, self.threads, self.cores)
        self.rates[(mixer, cost.form)] = compute / work
        return self.rates[(mixer, cost.form)]

    def predict(self, mixer: str, cost: FormCost, time_complexity: str, length: int,
                world: int) -> float | None:
        """Predicted seconds of one training step of ``cost.form``; None if not calibrated or
        its bytes are not predicted."""
        rate = self.rates.get((mixer, cost.form))
        wire = wire_seconds(cost, world, self.bandwidth_bytes_per_s, self.latency_s)
        if rate is None or wire is None or not cost.feasible:
            return None
        work = growth(time_complexity, length) / world * contention(world, self.threads, self.cores)
        return rate * work + wire
