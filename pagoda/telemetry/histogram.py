"""A Prometheus histogram that takes many equal observations at once, read by a collector when scraped.

prometheus_client's Histogram takes one value per call under a lock. The engine front observes per step
(one inter-token latency for every sequence that decoded in the step: `observe(step_interval, num_decodes)`)
and per request, from one thread; the metrics server reads a copy from another. No lock: a scrape may miss
the observation being recorded, never more, and the +Inf bucket always equals the count it reports.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client.core import HistogramMetricFamily


class Histogram:
    __slots__ = ("bounds", "_le", "counts", "sum")

    def __init__(self, bounds: Sequence[float]):
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must increase strictly, got {bounds}")
        self.bounds = tuple(float(b) for b in bounds)
        self._le = [_le(b) for b in self.bounds] + ["+Inf"]
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        # Prometheus buckets are `le` (value <= bound): bisect_left finds the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += count
        self.sum += value * count

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        counts, total = list(self.counts), self.sum
        cumulative, buckets = 0, []
        for le, n in zip(self._le, counts, strict=True):
            cumulative += n
            buckets.append((le, cumulative))
        family.add_metric(list(labels), buckets, total)


def _le(bound: float) -> str:
    return repr(float(bound))


def exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    """`count` bounds from `start`, each `factor` times the one before (rounded to 6 significant digits)."""
    return tuple(float(f"{start * factor**i:.6g}") for i in range(count))
