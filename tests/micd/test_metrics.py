"""Prometheus rendering of the latency histogram: buckets are cumulative and their bounds inclusive."""

from __future__ import annotations

from micd.metrics import Metrics


def test_latency_buckets_are_cumulative_with_inclusive_bounds():
    metrics = Metrics()
    for seconds in (0.0, 0.0005, 0.0006, 0.003, 20.0):
        metrics.observe(tool="bazel", tier="all", event="hit", nbytes=10, seconds=seconds)
    lines = metrics.render_prometheus().splitlines()
    buckets = {
        line.split('le="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("micd_latency_seconds_bucket")
    }
    assert buckets["0.0005"] == 2  # 0.0 and exactly 0.0005
    assert buckets["0.001"] == 3
    assert buckets["0.0025"] == 3
    assert buckets["0.005"] == 4
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    assert list(buckets.values()) == sorted(buckets.values())
    assert 'micd_requests_total{tool="bazel",tier="all",event="hit"} 5' in lines
    assert 'micd_bytes_total{tool="bazel",tier="all",event="hit"} 50' in lines
