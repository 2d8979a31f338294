"""Prometheus metrics of the services (prometheus-client), served on ``--metrics-port``.

Per service (the ``service`` label: ubscore, engine, project):

* ``ledger_inputs_total``, ``ledger_outputs_total``, ``ledger_batches_total``: records
  read and written, and output batches appended (one transaction each on Kafka);
* ``ledger_retries_total``: outages retried (each is also logged with its cause);
* ``ledger_batch_seconds``: how long a batch took from its first input to its append;
* ``ledger_input_lag`` (label ``input``): offsets between the read position and the end
  of each input, refreshed at most every ``LAG_EVERY_S``;
* ``ledger_position``: the last seq written (UBSCore) or read (an engine), or the sum of
  the streams' applied seqs (the projector);
* ``ledger_open_sequence_faults``: the projector's open gaps and other faults.

prometheus-client is imported only when metrics are asked for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

# Lags cost a request per input on Kafka: refreshed at most this often.
LAG_EVERY_S = 1.0
# Batch durations' histogram buckets, in seconds.
BATCH_SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ServiceMetrics:
    """The metrics of the services run in one process, in ``registry`` (a new
    ``CollectorRegistry`` if None)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.inputs = Counter("ledger_inputs", "records read", ["service"], registry=r)
        self.outputs = Counter("ledger_outputs", "records written", ["service"], registry=r)
        self.batches = Counter("ledger_batches", "output batches appended", ["service"], registry=r)
        self.retries = Counter("ledger_retries", "outages retried", ["service"], registry=r)
        self.batch_seconds = Histogram(
            "ledger_batch_seconds",
            "seconds from a batch's first input to its append",
            ["service"],
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.lag = Gauge("ledger_input_lag", "offsets between read position and end", ["service", "input"], registry=r)
        self.position = Gauge("ledger_position", "last seq written or read", ["service"], registry=r)
        self.open_faults = Gauge("ledger_open_sequence_faults", "open sequence faults", ["service"], registry=r)
        self._seen: dict[str, tuple[int, int, int, int, float]] = {}
        self._lag_at: dict[str, float] = {}

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` over HTTP on ``address:port`` (a daemon thread)."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=address, registry=self.registry)

    def update(self, services: Sequence[Any], opened: Sequence[bool]) -> None:
        """Bring the metrics up to the services' counters (cheap: called after every
        round); lags, positions and faults at most every ``LAG_EVERY_S``."""
        now = time.monotonic()
        for service, is_open in zip(services, opened, strict=True):
            name = service.name
            c = service.counters
            inputs, outputs, batches, retries, seconds = self._seen.get(name, (0, 0, 0, 0, 0.0))
            if c.inputs > inputs:
                self.inputs.labels(name).inc(c.inputs - inputs)
            if c.outputs > outputs:
                self.outputs.labels(name).inc(c.outputs - outputs)
            if c.retries > retries:
                self.retries.labels(name).inc(c.retries - retries)
            if c.batches > batches:
                self.batches.labels(name).inc(c.batches - batches)
                # The batches since the last update, each at their mean duration.
                mean = (c.batch_seconds - seconds) / (c.batches - batches)
                for _ in range(c.batches - batches):
                    self.batch_seconds.labels(name).observe(mean)
            self._seen[name] = (c.inputs, c.outputs, c.batches, c.retries, c.batch_seconds)
            if not is_open or now - self._lag_at.get(name, 0.0) < LAG_EVERY_S:
                continue
            self._lag_at[name] = now
            try:
                for label, lag in service.lags().items():
                    self.lag.labels(name, label).set(lag)
                self.position.labels(name).set(service.position())
                faults = getattr(service, "open_faults", None)
                if faults is not None:
                    self.open_faults.labels(name).set(faults())
            except Exception:  # noqa: BLE001 (a metric is never a reason to stop; the next step reports the outage)
                continue


__all__ = ["BATCH_SECONDS_BUCKETS", "LAG_EVERY_S", "ServiceMetrics"]
