"""Prometheus metrics of one node process.

Counters and histograms are updated where things happen; job counts by state are read from
the job log at scrape time, so they are right even after a restart or a CLI requeue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Modality label values (PS3.3 C.7.3.1.1.1, the ones a node on a radiology network meets);
# any other value a data set carries is counted as "other", so a sender cannot grow the
# metric's label set (and the scrape) without bound.
MODALITY_LABELS = frozenset(
    "CR DX CT MR US NM PT MG XA RF RG OT SC SR SEG KO PR DOC IO PX ES XC".split()  # noqa: SIM905
)

_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class _JobStateCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dicom_node_jobs", "Jobs in the job log by state", labels=["state"]
        )
        for state, count in self._counts().items():
            family.add_metric([state], count)
        yield family


def modality_label(modality: str | None) -> str:
    """The ``modality`` label for a data set's Modality: a known code, "unknown" or "other"."""
    value = (modality or "").strip().upper()
    if not value:
        return "unknown"
    return value if value in MODALITY_LABELS else "other"


class Metrics:
    """The node's metrics in their own registry (several nodes can live in one test run)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "dicom_node_received_instances",
            "Instances stored by the C-STORE SCP",
            ["modality"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "dicom_node_rejected_instances",
            "Instances refused by the C-STORE SCP",
            ["reason"],
            registry=self.registry,
        )
        self.processing_seconds = Histogram(
            "dicom_node_processing_seconds",
            "Time from job start to outputs written (pipeline + output building)",
            ["pipeline"],
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.turnaround_seconds = Histogram(
            "dicom_node_turnaround_seconds",
            "Time from the study's first instance received to all results delivered",
            ["pipeline"],
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.deliveries = Counter(
            "dicom_node_deliveries",
            "Result instances sent to the PACS by outcome",
            ["outcome"],
            registry=self.registry,
        )

        self.jobs_taken_back = Counter(
            "dicom_node_jobs_taken_back",
            "Running jobs this process found without a live worker (lease expired, node "
            "restarted), by what became of them",
            ["outcome"],
            registry=self.registry,
        )

    def watch_job_states(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_JobStateCollector(counts))
