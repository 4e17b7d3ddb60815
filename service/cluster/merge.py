"""One view of the metrics of several service replicas: each reports its own Prometheus registry, and the
service's ``/metrics`` and ``/v1/experiment`` describe them all together.

Counters and histograms add up (a replica that stopped keeps its last counts, so totals never go backwards);
gauges describe the present, so only replicas that reported recently count: queue depths add up, the others
(thresholds, replicas up, model info) take the highest value, since every replica reports the same one.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

ADDITIVE_GAUGES = frozenset({"blockdrop_queue_depth"})


def parse_exposition(text: str) -> list[Metric]:
    """The metric families of one replica's ``/metrics`` text."""
    return list(text_string_to_metric_families(text))


def merge_families(current: Iterable[Iterable[Metric]], past: Iterable[Iterable[Metric]] = ()) -> list[Metric]:
    """Merge the families of replicas that report now (``current``) with those of replicas gone quiet
    (``past``: their counters and histograms still count, their gauges no longer do)."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families, live in [*((f, True) for f in current), *((f, False) for f in past)]:
        for family in families:
            if family.type == "gauge" and not live:
                continue
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):  # a per-process start time: no meaning once merged
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif family.type == "gauge" and family.name not in ADDITIVE_GAUGES:
                    samples[key] = max(samples[key], sample.value)
                else:
                    samples[key] += sample.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class Families:
    """A registry-like holder, so that ``generate_latest`` renders merged families."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
