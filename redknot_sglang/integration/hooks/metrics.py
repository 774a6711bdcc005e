"""The document store's counters as Prometheus gauges under ``--enable-metrics``.

AFTER hooks on the scheduler's metrics reporter (``report_prefill_stats``, ``report_decode_stats``:
once per prefill batch and per decode step) set ``sglang:redknot_<counter>`` from the counters that
``/get_server_info`` shows (:mod:`~redknot_sglang.integration.hooks.stats`), with SGLang's own
labels, in SGLang's multiprocess registry (``/metrics`` of the HTTP server). Cumulative counters
(placed tokens, hits, captures) are gauges holding the running total: the store's owner, the
scheduler, is the only writer.
"""

from __future__ import annotations

from typing import Any

_REPORTER = "sglang.srt.managers.scheduler_components.metrics_reporter.SchedulerMetricsReporter."
PREFILL = _REPORTER + "report_prefill_stats"
DECODE = _REPORTER + "report_decode_stats"

GAUGES = {
    "documents": "documents whose KV the store holds",
    "device_bytes": "bytes of document KV on the device",
    "host_bytes": "bytes of document KV spilled to host memory",
    "captured_documents": "documents captured so far",
    "document_hits": "cached documents placed into requests so far",
    "placed_requests": "requests that got documents placed so far",
    "placed_tokens": "document tokens placed (not computed) so far",
    "gap_tokens": "tokens between placed documents computed in the extend after their placement so far",
    "placement_misses": "placements given up for lack of free KV slots so far",
    "recomputed_tokens": "tokens recomputed by selective recompute so far",
}
_gauges: dict[str, Any] = {}


def _gauges_for(labelnames: list[str]) -> dict[str, Any]:
    if not _gauges:  # created in the scheduler process, after SGLang set PROMETHEUS_MULTIPROC_DIR
        from prometheus_client import Gauge

        for key, doc in GAUGES.items():
            _gauges[key] = Gauge(f"sglang:redknot_{key}", doc, labelnames=labelnames, multiprocess_mode="mostrecent")
    return _gauges


def report(result: Any, reporter: Any, *args: Any, **kwargs: Any) -> Any:
    collector = reporter.metrics_collector
    reuse = getattr(reporter.scheduler.tree_cache, "document_reuse", None)
    if not reporter.enable_metrics or collector is None or reuse is None:
        return result
    values = reuse.counters()
    for key, gauge in _gauges_for(list(collector.labels)).items():
        gauge.labels(**collector.labels).set(values[key])
    return result
