"""The service's Prometheus metrics, defined in this one place and served at `/metrics`.

With several worker processes (`ordergraph serve --workers N`) each worker writes its numbers
to files under `PROMETHEUS_MULTIPROC_DIR`, and `/metrics` on any worker adds them up: a scrape
sees the whole service, whichever worker answers it. prometheus_client reads that variable when
it is first imported; `serve` sets it before uvicorn spawns the workers (fresh interpreters),
and Settings checks that it names a directory.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

ORDER_TRANSITIONS = Counter(
    "ordergraph_order_transitions",
    "Order status changes committed, by the status before and after.",
    ["from_status", "to_status"],
)
PAYMENT_TRANSITIONS = Counter(
    "ordergraph_payment_transitions",
    "Payment status changes committed, by the payment status before and after.",
    ["from_status", "to_status"],
)
CHECKOUTS = Counter(
    "ordergraph_checkouts",
    "Checkout attempts, by outcome: created, or the error code that refused them.",
    ["outcome"],
)
WEBHOOK_EVENTS = Counter(
    "ordergraph_webhook_events",
    "Stripe webhook deliveries, by event type and outcome.",
    ["type", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "ordergraph_webhook_processing_seconds",
    "Time to verify and apply one Stripe webhook delivery, by event type.",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EMAILS = Counter(
    "ordergraph_emails",
    "Outbox sending attempts: sent, retried (failed, will be tried again) or dead (given up).",
    ["outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "ordergraph_webhook_deliveries",
    "Outgoing webhook attempts: delivered, retried (failed, will be tried again), dead (given "
    "up), or refused (the target's address is not allowed; retried as a failure).",
    ["outcome"],
)
WEBHOOK_DELAY_SECONDS = Histogram(
    "ordergraph_webhook_delivery_delay_seconds",
    "From an outgoing webhook event's commit to its delivery (2xx), retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600, 86400),
)
ACTIVE_SUBSCRIPTIONS = Gauge(
    "ordergraph_active_subscriptions",
    "Subscriptions (orderStatusChanged, orderChanges) being served now.",
    multiprocess_mode="livesum",
)
STRIPE_SECONDS = Histogram(
    "ordergraph_stripe_request_seconds",
    "Latency of calls to Stripe (retries included), by operation and outcome.",
    ["operation", "outcome"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@contextmanager
def stripe_call(operation: str) -> Iterator[None]:
    """Times a call to Stripe; its outcome is `ok`, or the exception's class name."""
    started = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        STRIPE_SECONDS.labels(operation, outcome).observe(time.perf_counter() - started)


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_VARIABLE) or None


def start_multiprocess_dir(directory: str) -> None:
    """Before the workers start: numbers left by an earlier run of the service would be
    added to this run's (a reused pid would even take over a dead worker's gauge)."""
    for path in Path(directory).glob("*.db"):
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(directory: str) -> None:
    """A worker killed without a clean shutdown (uvicorn's supervisor restarts it under a new
    pid) leaves its live gauges behind; they no longer count once it is gone."""
    for path in Path(directory).iterdir():
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets, and its content type."""
    directory = _multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    forget_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def authorized(expected_token: str, authorization: str | None) -> bool:
    """Whether the request carries METRICS_TOKEN as its bearer token."""
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected_token.encode()
    )


def process_exiting() -> None:
    """A worker that stops takes its live gauges with it (its counters stay in the sums)."""
    directory = _multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid(), directory)
