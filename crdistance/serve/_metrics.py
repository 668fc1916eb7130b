"""The server's counters, in the Prometheus text exposition format (0.0.4).

No client library: a handful of counters and histograms, updated from the
event loop's thread only (batch metrics arrive through ``call_soon``), so
no lock is needed.
"""

import time
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative buckets, sum and count of observed values."""

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value):
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name, labels=""):
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts, strict=True):
            yield f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {count}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}'
        braces = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{braces} {self.sum:.6g}"
        yield f"{name}_count{braces} {self.count}"


class Metrics:
    """What ``GET /metrics`` reports."""

    def __init__(self):
        self.started = time.time()
        self.requests = defaultdict(int)  # (route, status) -> count
        self.latency = defaultdict(lambda: Histogram(LATENCY_BUCKETS))
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.images = 0
        self.anomalies = 0
        self.reloads = defaultdict(int)  # "ok" / "failed" -> count
        self.in_flight = 0

    def request(self, route, status, seconds):
        self.requests[route, status] += 1
        self.latency[route].observe(seconds)

    def batch(self, n_images, seconds):
        self.batch_sizes.observe(n_images)
        self.batch_seconds.observe(seconds)

    def verdicts(self, results):
        self.images += len(results)
        self.anomalies += sum(bool(result["is_anomaly"]) for result in results)

    def text(self, model):
        """The exposition text; `model` is the served model's info dict."""
        lines = [
            "# HELP crdistance_requests_total HTTP requests by route and status.",
            "# TYPE crdistance_requests_total counter",
        ]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(
                f'crdistance_requests_total{{route="{route}",status="{status}"}} '
                f"{count}")
        lines += [
            "# HELP crdistance_request_duration_seconds Time to answer a request.",
            "# TYPE crdistance_request_duration_seconds histogram",
        ]
        for route, histogram in sorted(self.latency.items()):
            lines += histogram.lines("crdistance_request_duration_seconds",
                                     f'route="{route}"')
        lines += [
            "# HELP crdistance_batch_images Images per model batch.",
            "# TYPE crdistance_batch_images histogram",
            *self.batch_sizes.lines("crdistance_batch_images"),
            "# HELP crdistance_batch_duration_seconds Time of one model batch.",
            "# TYPE crdistance_batch_duration_seconds histogram",
            *self.batch_seconds.lines("crdistance_batch_duration_seconds"),
            "# HELP crdistance_images_total Images (or feature maps) scored.",
            "# TYPE crdistance_images_total counter",
            f"crdistance_images_total {self.images}",
            "# HELP crdistance_anomalies_total Images called anomalous.",
            "# TYPE crdistance_anomalies_total counter",
            f"crdistance_anomalies_total {self.anomalies}",
            "# HELP crdistance_model_reloads_total Model reloads by outcome.",
            "# TYPE crdistance_model_reloads_total counter",
        ]
        for outcome in ("ok", "failed"):
            lines.append(f'crdistance_model_reloads_total{{outcome="{outcome}"}} '
                         f"{self.reloads[outcome]}")
        lines += [
            "# HELP crdistance_requests_in_flight Requests being answered.",
            "# TYPE crdistance_requests_in_flight gauge",
            f"crdistance_requests_in_flight {self.in_flight}",
            "# HELP crdistance_model_info The served model (value 1).",
            "# TYPE crdistance_model_info gauge",
            f'crdistance_model_info{{model="{_escape(model["model"])}",'
            f'version="{model["version"]}",detector="{model["detector"]}"}} 1',
            "# HELP crdistance_start_time_seconds Unix time the server started.",
            "# TYPE crdistance_start_time_seconds gauge",
            f"crdistance_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(lines) + "\n"


def _escape(value):
    return str(value).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
