"""Counters and latency summaries per (tool, tier, event), rendered as Prometheus text.

Tiers and stores call `observe`; nothing here knows about protocols. Kept out of tier logic so a tier can be
tested without metrics (pass `Metrics()` or nothing).
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import defaultdict
from dataclasses import dataclass

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class _Series:
    count: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        """Observations per bucket, not cumulative (one increment per observation); the last is +Inf."""


class Metrics:
    """Thread-safe registry. Events: "hit", "miss", "put", "error"; tiers: "memory", "disk", "s3", "all"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], _Series] = defaultdict(_Series)
        self._gauges: dict[str, float] = {}
        self._counters: dict[str, float] = defaultdict(float)

    def observe(self, *, tool: str, tier: str, event: str, nbytes: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            series = self._series[(tool, tier, event)]
            series.count += 1
            series.bytes += nbytes
            series.seconds += seconds
            series.buckets[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def inc(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self._counters[name] += value

    def snapshot(self) -> dict:
        """Plain data for `mic stats --json`: series keyed "tool/tier/event", gauges and counters."""
        with self._lock:
            return {
                "series": {
                    f"{tool}/{tier}/{event}": {"count": s.count, "bytes": s.bytes, "seconds": round(s.seconds, 6)}
                    for (tool, tier, event), s in sorted(self._series.items())
                },
                "gauges": dict(sorted(self._gauges.items())),
                "counters": dict(sorted(self._counters.items())),
            }

    def render_prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines = [
            "# HELP micd_requests_total Store operations by tool, tier and event.",
            "# TYPE micd_requests_total counter",
        ]
        with self._lock:
            items = sorted(self._series.items())
            for (tool, tier, event), s in items:
                lines.append(f'micd_requests_total{{tool="{tool}",tier="{tier}",event="{event}"}} {s.count}')
            lines += ["# HELP micd_bytes_total Bytes moved by tool, tier and event.", "# TYPE micd_bytes_total counter"]
            for (tool, tier, event), s in items:
                lines.append(f'micd_bytes_total{{tool="{tool}",tier="{tier}",event="{event}"}} {s.bytes}')
            lines += [
                "# HELP micd_latency_seconds Store operation latency.",
                "# TYPE micd_latency_seconds histogram",
            ]
            for (tool, tier, event), s in items:
                labels = f'tool="{tool}",tier="{tier}",event="{event}"'
                cumulative = itertools.accumulate(s.buckets)
                for bound, count in zip(_LATENCY_BUCKETS, cumulative, strict=False):
                    lines.append(f'micd_latency_seconds_bucket{{{labels},le="{bound}"}} {count}')
                lines.append(f'micd_latency_seconds_bucket{{{labels},le="+Inf"}} {s.count}')
                lines.append(f"micd_latency_seconds_sum{{{labels}}} {s.seconds}")
                lines.append(f"micd_latency_seconds_count{{{labels}}} {s.count}")
            for name, value in sorted(self._counters.items()):
                lines += [f"# TYPE micd_{name} counter", f"micd_{name} {value}"]
            for name, value in sorted(self._gauges.items()):
                lines += [f"# TYPE micd_{name} gauge", f"micd_{name} {value}"]
        return "\n".join(lines) + "\n"
