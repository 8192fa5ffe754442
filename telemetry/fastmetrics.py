"""Histograms and counters cheap enough for the request path, exposed through prometheus_client.

prometheus_client's `labels(...)` lookup and locked `observe` cost a few microseconds each; at tens of
thousands of requests per second on one core that is a visible share of the budget. These keep plain dicts
keyed by the label tuple (one event loop owns them; the scrape runs on the same loop, so no locks) and are
rendered at scrape time, exemplars included.

Rendering: `render(out, openmetrics)` writes the same bytes prometheus_client's `generate_latest` /
OpenMetrics `generate_latest` would (a test compares them), but with each series' label text built once: for a
1,000-instance pool (~19,000 lines) prometheus_client took ~330 ms per scrape, on the event loop that also
carries the data plane. `collect()` stays for anything that walks a registry.

Primitives: `FastHistogram.observe(labels, value, trace_id)`, `FastCounter.inc(labels, n)`.
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString


def _escape(value: str) -> str:
    """A label value (or OpenMetrics HELP text) as the exposition formats write it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _help(documentation: str, openmetrics: bool) -> str:
    if openmetrics:
        return _escape(documentation)
    return documentation.replace("\\", r"\\").replace("\n", r"\n")


class _LabelText:
    """Per series, the `{...}` label text in the exposition's sorted-by-name order, built once; for a
    histogram also the text before and after the `le` label, which sorts in among the others."""

    def __init__(self, labelnames: Sequence[str], with_le: bool):
        names = list(labelnames) + (["le"] if with_le else [])
        self._order = sorted(range(len(names)), key=lambda i: names[i])
        self._names = names
        self._le = len(labelnames) if with_le else None
        self._cache: dict[tuple[str, ...], tuple[str, str, str]] = {}

    def __call__(self, values: tuple[str, ...]) -> tuple[str, str, str]:
        hit = self._cache.get(values)
        if hit is not None:
            return hit
        before, after, plain = [], [], []
        seen_le = False
        for i in self._order:
            if i == self._le:
                seen_le = True
                continue
            pair = f'{self._names[i]}="{_escape(values[i])}"'
            plain.append(pair)
            (after if seen_le else before).append(pair)
        hit = ("".join(p + "," for p in before), "".join("," + p for p in after),
               "{" + ",".join(plain) + "}" if plain else "")
        self._cache[values] = hit
        return hit


class FastHistogram:
    """A prometheus_client collector (registered as a virtual `Collector`: an extension type when compiled,
    fastmetrics.pxd, whose `observe` the recorder calls directly)."""

    __slots__ = ("name", "unit", "documentation", "labelnames", "buckets", "_series", "_les", "_text")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 unit: str = ""):
        self.name = name
        self.unit = unit  # OpenMetrics `# UNIT` (the name must end with it)
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets)
        self._series: dict[tuple[str, ...], list] = {}
        self._les = [_fmt(b) for b in self.buckets] + ["+Inf"]
        self._text = _LabelText(self.labelnames, with_le=True)

    @cython.locals(s=list, counts=list, buckets=tuple, lo=cython.Py_ssize_t, hi=cython.Py_ssize_t,
                   mid=cython.Py_ssize_t, i=cython.Py_ssize_t, bound=cython.double)
    def observe(self, labels: tuple[str, ...], value: float, trace_id: str | None = None) -> None:
        s = self._series.get(labels)
        if s is None:
            n = len(self.buckets) + 1
            # [per-bucket counts (not cumulative), sum, per-bucket exemplar (trace_id, value, unix time)]
            s = self._series[labels] = [[0] * n, 0.0, [None] * n]
        # The first bucket whose upper bound is >= value (`bisect.bisect_left`), written out: compiled, a C loop
        # over the bounds instead of a call with a comparison of Python floats at each step.
        buckets = self.buckets
        lo, hi = 0, len(buckets)
        while lo < hi:
            mid = (lo + hi) // 2
            bound = buckets[mid]
            if bound < value:
                lo = mid + 1
            else:
                hi = mid
        i = lo
        counts = s[0]
        counts[i] += 1
        s[1] += value
        if trace_id is not None:
            s[2][i] = (trace_id, value, time.time())

    def forget(self, where: dict[int, str]) -> None:
        """Drop every series whose labels match `where` (label index → value), e.g. a removed instance's."""
        for labels in [k for k in self._series if all(k[i] == v for i, v in where.items())]:
            del self._series[labels]

    def collect(self) -> Iterable[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames, unit=self.unit)
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

    def render(self, out: list[str], openmetrics: bool) -> None:
        name = self.name
        out.append(f"# HELP {name} {_help(self.documentation, openmetrics)}\n# TYPE {name} histogram\n")
        if openmetrics and self.unit:
            out.append(f"# UNIT {name} {self.unit}\n")
        for labels, (counts, total, exemplars) in list(self._series.items()):
            before, after, plain = self._text(labels)
            cumulative = 0
            for le, c, ex in zip(self._les, counts, exemplars):
                cumulative += c
                line = f'{name}_bucket{{{before}le="{le}"{after}}} {floatToGoString(cumulative)}'
                if openmetrics and ex is not None:
                    line += f' # {{trace_id="{_escape(ex[0])}"}} {floatToGoString(ex[1])} {ex[2]}'
                out.append(line + "\n")
            out.append(f"{name}_count{plain} {floatToGoString(cumulative)}\n{name}_sum{plain} "
                       f"{floatToGoString(total)}\n")

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames, unit=self.unit)


class FastCounter:
    """A prometheus_client collector, like `FastHistogram`."""

    __slots__ = ("name", "documentation", "labelnames", "_values", "_text")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]):
        self.name = name  # without _total; the exposition adds it
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        # label values → [value]: a cell, so an increment hashes the label tuple once (a get, then in place)
        self._values: dict[tuple[str, ...], list[float]] = {}
        self._text = _LabelText(self.labelnames, with_le=False)

    @cython.locals(cell=list)
    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        cell = self._values.get(labels)
        if cell is None:
            cell = self._values[labels] = [0.0]
        cell[0] += amount

    def value(self, labels: tuple[str, ...]) -> float:
        cell = self._values.get(labels)
        return 0.0 if cell is None else cell[0]

    def forget(self, where: dict[int, str]) -> None:
        """Drop every series whose labels match `where` (label index → value), e.g. a removed instance's."""
        for labels in [k for k in self._values if all(k[i] == v for i, v in where.items())]:
            del self._values[labels]

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, (v,) in list(self._values.items()):
            fam.add_metric(list(labels), v)
        yield fam

    def render(self, out: list[str], openmetrics: bool) -> None:
        name = self.name
        family = name if openmetrics else name + "_total"
        out.append(f"# HELP {family} {_help(self.documentation, openmetrics)}\n# TYPE {family} counter\n")
        for labels, (v,) in list(self._values.items()):
            out.append(f"{name}_total{self._text(labels)[2]} {floatToGoString(v)}\n")

    def describe(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


# Collectors to prometheus_client (`isinstance(x, Collector)`), without the ABC as a base an extension type cannot have
Collector.register(FastHistogram)
Collector.register(FastCounter)


def _fmt(b: float) -> str:
    return repr(float(b))
