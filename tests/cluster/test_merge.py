"""Merging the metrics of several ingress replicas into one view of the service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.cluster.merge import Families, merge_families, parse_exposition


def replica(images: int, latencies: list[float], depth: int, threshold: float) -> list:
    registry = CollectorRegistry()
    Counter("blockdrop_images", "images", ["variant"], registry=registry).labels("a").inc(images)
    histogram = Histogram("blockdrop_latency_seconds", "latency", ["variant"], buckets=(0.01, 0.1), registry=registry)
    for value in latencies:
        histogram.labels("a").observe(value)
    Gauge("blockdrop_queue_depth", "depth", ["variant"], registry=registry).labels("a").set(depth)
    Gauge("blockdrop_policy_threshold", "threshold", ["variant"], registry=registry).labels("a").set(threshold)
    # through the exposition text, as the replicas share them
    return parse_exposition(generate_latest(registry).decode())


def samples(families: list) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_counters_and_histograms_add_up_queue_depths_add_other_gauges_agree():
    merged = samples(merge_families([replica(3, [0.005, 0.05], 2, 0.6), replica(4, [0.5], 5, 0.6)]))
    assert merged[("blockdrop_images_total", (("variant", "a"),))] == 7
    assert merged[("blockdrop_latency_seconds_bucket", (("le", "0.01"), ("variant", "a")))] == 1
    assert merged[("blockdrop_latency_seconds_bucket", (("le", "0.1"), ("variant", "a")))] == 2
    assert merged[("blockdrop_latency_seconds_bucket", (("le", "+Inf"), ("variant", "a")))] == 3
    assert merged[("blockdrop_latency_seconds_count", (("variant", "a"),))] == 3
    assert abs(merged[("blockdrop_latency_seconds_sum", (("variant", "a"),))] - 0.555) < 1e-9
    assert merged[("blockdrop_queue_depth", (("variant", "a"),))] == 7
    assert merged[("blockdrop_policy_threshold", (("variant", "a"),))] == 0.6
    assert not any(name.endswith("_created") for name, _ in merged)


def test_a_quiet_replica_keeps_its_counts_but_not_its_gauges():
    merged = samples(merge_families([replica(3, [], 1, 0.7)], past=[replica(10, [], 50, 0.9)]))
    assert merged[("blockdrop_images_total", (("variant", "a"),))] == 13
    assert merged[("blockdrop_queue_depth", (("variant", "a"),))] == 1
    assert merged[("blockdrop_policy_threshold", (("variant", "a"),))] == 0.7


def test_merged_families_render_as_prometheus_text_that_parses_back():
    merged = merge_families([replica(2, [0.05], 0, 0.5), replica(1, [0.05], 0, 0.5)])
    text = generate_latest(Families(merged)).decode()
    assert 'blockdrop_images_total{variant="a"} 3.0' in text
    assert samples(parse_exposition(text)) == samples(merged)
