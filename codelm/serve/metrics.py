"""Server counters in Prometheus's text format (GET /metrics), so any scraper can chart the server.

The scheduler thread writes the counters and histograms; a scrape reads them as
they are (a scrape may see one step half-counted, which monitoring tolerates).
"""

import bisect
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self):
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float):
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        cumulative, out = 0, []
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        return [
            *out,
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total}",
            f"{name}_count {self.count}",
        ]


@dataclass
class Metrics:
    requests: dict[tuple[str, int], int] = field(default_factory=dict)  # (route, status) -> count
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose prefill the prefix cache saved
    generation_tokens: int = 0
    steps: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))  # sequences per decode step

    def count_request(self, route: str, status: int):
        self.requests[route, status] = self.requests.get((route, status), 0) + 1

    def render(self, waiting: int, running: int, max_seqs: int, hit_tokens: int, queried_tokens: int) -> str:
        """The exposition text; the gauges are read from the scheduler and block pool at scrape time."""
        lines = ["# TYPE codelm_requests_total counter"]
        lines += [
            f'codelm_requests_total{{route="{route}",status="{status}"}} {n}'
            for (route, status), n in sorted(self.requests.items())
        ]
        scalars = [
            ("prompt_tokens_total", "counter", self.prompt_tokens),
            ("prompt_tokens_cached_total", "counter", self.cached_prompt_tokens),
            ("generation_tokens_total", "counter", self.generation_tokens),
            ("scheduler_steps_total", "counter", self.steps),
            ("queue_length", "gauge", waiting),
            ("running_sequences", "gauge", running),
            ("batch_occupancy", "gauge", running / max_seqs),
            ("prefix_cache_queried_tokens_total", "counter", queried_tokens),
            ("prefix_cache_hit_tokens_total", "counter", hit_tokens),
            ("prefix_cache_hit_rate", "gauge", hit_tokens / queried_tokens if queried_tokens else 0.0),
        ]
        for name, kind, value in scalars:
            lines += [f"# TYPE codelm_{name} {kind}", f"codelm_{name} {value}"]
        lines += [
            "# TYPE codelm_time_to_first_token_seconds histogram",
            *self.ttft.lines("codelm_time_to_first_token_seconds"),
        ]
        lines += ["# TYPE codelm_decode_batch_size histogram", *self.batch_sizes.lines("codelm_decode_batch_size")]
        return "\n".join(lines) + "\n"
