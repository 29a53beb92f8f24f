"""The mail benchmark still runs: `python -m bench.mail` with a small backlog and a short
stream against PostgreSQL on loopback. Only that it produced numbers, and that every mail was
received once, is checked: timings are never asserted here.

Runs in the PostgreSQL pass (ORDERGRAPH_TEST_DB=postgres), or whenever ORDERGRAPH_BENCH_SMOKE=1,
as the other benchmark smoke tests do.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import BACKEND, IN_CI, _postgres_available

ROOT = Path(__file__).resolve().parents[2]
BENCH_PG = os.environ.get("ORDERGRAPH_BENCH_PG", "postgres://root@127.0.0.1:5432/test")

pytestmark = pytest.mark.skipif(
    BACKEND != "postgres" and os.environ.get("ORDERGRAPH_BENCH_SMOKE") != "1",
    reason="the mail benchmark's smoke run needs PostgreSQL: it runs in the PostgreSQL pass"
    " (ORDERGRAPH_TEST_DB=postgres) or with ORDERGRAPH_BENCH_SMOKE=1",
)


def test_the_mail_benchmark_runs(tmp_path: Path) -> None:
    if urlsplit(BENCH_PG).hostname not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"ORDERGRAPH_BENCH_PG is not on loopback ({BENCH_PG}): not run")
    problem = asyncio.run(_postgres_available())
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    out = tmp_path / "mail-smoke.json"
    small = ["--mails", "60", "--rate", "40", "--seconds", "1", "--output", str(out)]
    completed = subprocess.run(
        [sys.executable, "-m", "bench.mail", *small],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results: dict[str, Any] = json.loads(out.read_text())
    backlog, stream = results["backlog"], results["stream"]
    assert backlog["received"] == backlog["distinct_message_ids"] == backlog["mails"] == 60
    assert stream["received"] == stream["distinct_message_ids"] == stream["written"] == 40
    for part in (backlog, stream):
        assert part["sender_cpu_ms_per_mail"] > 0, part
    assert backlog["mails_per_second"] > 0
