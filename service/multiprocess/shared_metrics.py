"""``/metrics`` and ``/v1/experiment`` over every process of the service.

Every process (API servers and model servers) runs prometheus_client in multiprocess mode: the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` to a folder in the runtime folder before it starts them, and each process's counters
and histograms live in memory-mapped files there, so one scrape sums them exactly, a replaced process's counts
included. Gauges are another matter: what they describe (queue depth, workers up, the live threshold, rollout
shares) is one value for the whole service, which the scraping API server reads from the shared state itself
(its own gauges, set from functions), rather than a sum or a maximum over processes' stale copies.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from prometheus_client import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.metrics import ServiceMetrics

SUMMED_KINDS = ("counter", "histogram")


class SharedMetrics(ServiceMetrics):
    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory

    def collect(self) -> list[Metric]:
        files = [f for kind in SUMMED_KINDS for f in glob.glob(os.path.join(self.directory, f"{kind}_*.db"))]
        summed = list(MultiProcessCollector.merge(files, accumulate=True))
        gauges = [family for family in self.registry.collect() if family.type == "gauge"]
        return summed + gauges
