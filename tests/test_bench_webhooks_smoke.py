"""The outgoing-webhook benchmark still runs: `python -m bench.webhooks --smoke` (seconds a
point, tiny backlogs) against PostgreSQL on loopback. Only that it produced numbers is checked:
timings are never asserted here (docs/benchmarks.md, "Outgoing webhooks", has the figures).

Runs in the PostgreSQL pass of scripts/test (ORDERGRAPH_TEST_DB=postgres), or whenever
ORDERGRAPH_BENCH_SMOKE=1. PostgreSQL unreachable: skipped, unless CI=true. The benchmark's
processes inherit the tests' network guard (tests/utils/loopback.py, through os.environ), and
the database it uses must be on loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import BACKEND, IN_CI, _postgres_available

ROOT = Path(__file__).resolve().parent.parent
BENCH_PG = os.environ.get("ORDERGRAPH_BENCH_PG", "postgres://root@127.0.0.1:5432/test")

pytestmark = pytest.mark.skipif(
    BACKEND != "postgres" and os.environ.get("ORDERGRAPH_BENCH_SMOKE") != "1",
    reason="the webhook benchmark's smoke run needs PostgreSQL: it runs in the PostgreSQL pass"
    " (ORDERGRAPH_TEST_DB=postgres) or with ORDERGRAPH_BENCH_SMOKE=1",
)


def _loopback(dsn: str) -> bool:
    host = urlsplit(dsn).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not _loopback(BENCH_PG):
        pytest.skip(f"ORDERGRAPH_BENCH_PG is not on loopback ({BENCH_PG}): not run")
    problem = asyncio.run(_postgres_available())
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    out = tmp_path_factory.mktemp("bench") / "webhooks-smoke.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.webhooks", "--smoke", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results: dict[str, Any] = json.loads(out.read_text())
    return results


def test_every_endpoint_count_was_drained(smoke: dict[str, Any]) -> None:
    points = {p["endpoints"]: p for p in smoke["throughput"] if not p["one_origin"]}
    assert sorted(points) == [1, 10, 100]
    for count, point in points.items():
        assert point["received"] == point["deliveries"] > 0, point
        assert point["delivered_in_db"] == point["deliveries"], point
        assert _positive(point["deliveries_per_second"]), point
        assert _positive(point["events_per_second"]), point
        assert point["signature_verified"], (count, point)


def test_latency_with_and_without_endpoints(smoke: dict[str, Any]) -> None:
    kinds = {row["kind"] for row in smoke["latency"]}
    assert kinds == {"checkout", "webhook"}
    for row in smoke["latency"]:
        assert {r["endpoints"] for r in row["runs"]} == {0, 10}
        for run in row["runs"]:
            load = run["load"]
            assert load["ok"] > 0, load
            assert _positive(load["throughput"]) and _positive(load["p50_ms"]), load
            if run["endpoints"] and run["variant"] == "writes-only":
                assert run["events_written"] > 0, run
            elif run["endpoints"]:
                assert run["sender"]["created"] > 0, run["sender"]
        assert all(not math.isnan(v) for v in row["added_pct"].values()), row["added_pct"]


def test_latency_with_the_sender_in_the_server_in_its_own_process_and_none(
    smoke: dict[str, Any],
) -> None:
    """Every variant ran for both loads, at the paced rate: the server's own sender,
    `send-webhooks` beside a server with WEBHOOK_CONCURRENCY=0 (whose CPU is counted apart),
    and that server with nothing sending (the events written, none fanned out or sent)."""
    variants = {(row["kind"], row["variant"]) for row in smoke["latency"]}
    assert variants == {
        (kind, variant)
        for kind in ("checkout", "webhook")
        for variant in ("in-server", "own-process", "writes-only")
    }
    for row in smoke["latency"]:
        assert row["rate"] == 25.0, row["rate"]
        for run in row["runs"]:
            assert run["variant"] == row["variant"]
            if row["variant"] == "own-process":
                assert "sender_process" in run, run
            if run["endpoints"] and row["variant"] == "writes-only":
                # The events written, none fanned out to deliveries or sent.
                assert run["events_written"] > 0 and run["sender"]["created"] == 0, run
            elif run["endpoints"]:
                assert run["sender"]["delivered"] > 0, run["sender"]
