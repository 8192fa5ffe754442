"""Histograms and counters cheap enough for the request path, exposed through prometheus_client.

prometheus_client's `labels(...)` lookup and locked `observe` cost a few microseconds each; at tens of
thousands of requests per second on one core that is a visible share of the budget. These keep plain dicts
keyed by the label tuple (one event loop owns them; the scrape runs on the same loop, so no locks) and are
rendered by a `Collector` at scrape time, exemplars included.

Primitives: `FastHistogram.observe(labels, value, trace_id)`, `FastCounter.inc(labels, n)`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Iterable, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar


class FastHistogram(Collector):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets)
        self._series: dict[tuple[str, ...], list] = {}

    def observe(self, labels: tuple[str, ...], value: float, trace_id: str | None = None) -> None:
        s = self._series.get(labels)
        if s is None:
            n = len(self.buckets) + 1
            # [per-bucket counts (not cumulative), sum, per-bucket exemplar (trace_id, value, unix time)]
            s = self._series[labels] = [[0] * n, 0.0, [None] * n]
        i = bisect_left(self.buckets, value)
        s[0][i] += 1
        s[1] += value
        if trace_id is not None:
            s[2][i] = (trace_id, value, time.time())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [_fmt(b) for b in self.buckets] + ["+Inf"]
        for labels, (counts, total, exemplars) in list(self._series.items()):
            cumulative = 0
            buckets = []
            for le, c, ex in zip(les, counts, exemplars):
                cumulative += c
                if ex is not None:
                    buckets.append((le, cumulative, Exemplar({"trace_id": ex[0]}, ex[1], ex[2])))
                else:
                    buckets.append((le, cumulative))
            fam.add_metric(list(labels), buckets, total)
        yield fam

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


class FastCounter(Collector):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]):
        self.name = name  # without _total; the exposition adds it
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, labels: tuple[str, ...]) -> float:
        return self._values.get(labels, 0.0)

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, v in list(self._values.items()):
            fam.add_metric(list(labels), v)
        yield fam

    def describe(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


def _fmt(b: float) -> str:
    return repr(float(b))
