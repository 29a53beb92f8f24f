"""Finding and exporting orders over 1,000,000 (issue 15): staff's `orders` list through
GraphQL over HTTP, and `GET /exports/orders.csv` with the server's memory watched.

    .venv/bin/python -m bench.search [--orders 1000000] [--requests 300] [--no-docs]

Makes its own PostgreSQL database (`ORDERGRAPH_BENCH_PG`, as `bench.run`), seeds it with SQL
(`bench.search_seed`), starts one `ordergraph serve --workers 1` (and the emulator and a mail
sink it expects), and sends each request alone on one keep-alive connection with a staff token
(latency, not throughput: nothing queues), after a warm-up. Each request picks its own terms,
so no answer is a cached one. The export is read as fast as this process can while the
worker's VmRSS is sampled every 20 ms. The database is dropped at the end, whatever happens.
Results: bench/results/search.json, and the table between the `search` markers of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from bench.common import (
    JWT_SECRET,
    RESULTS,
    ROOT,
    STAFF_USER,
    BenchDatabase,
    MailSinkProcess,
    Stack,
    percentile,
    postgres_problem,
    rss_mib,
)
from bench.loadgen import HttpConnection, http_post
from bench.search_seed import FIRST, MATERIALS, NOUNS, STATUSES, seed
from ordergraph.auth import issue_token

LIST = """query($filter: OrderFilter, $sort: OrderSort, $first: Int) {
  orders(filter: $filter, sort: $sort, first: $first) {
    totalCount
    edges { cursor node { id status paymentStatus createdAt email total { amount currency }
                          lines { productName quantity } } }
    pageInfo { hasNextPage endCursor }
  }
}"""
TICK = os.sysconf("SC_CLK_TCK")
# The issue's two targets, and the product search: `--requests` each; the others a third.
MAIN = ("email", "page", "product")
WARMUP = 20
STATUS_NAMES = [status.upper() for status, _, _ in STATUSES]
Pick = Callable[[random.Random], dict[str, Any]]


def _window(rng: random.Random, days: int) -> dict[str, str]:
    end = datetime.now(UTC) - timedelta(days=rng.uniform(0, 365 - days))
    return {"createdFrom": (end - timedelta(days=days)).isoformat(), "createdTo": end.isoformat()}


def scenarios(emails: list[str], names: list[str], ids: list[str]) -> dict[str, tuple[str, Pick]]:
    """name -> (what it is, variables for one request)."""

    def search(term: str) -> dict[str, Any]:
        return {"filter": {"search": term}, "first": 50}

    return {
        "email": (
            "email prefix `first.last` (about 10 shoppers' orders)",
            lambda r: search(r.choice(emails).split("@")[0].rstrip("0123456789")),
        ),
        "email_whole": ("a whole email", lambda r: search(r.choice(emails))),
        "email_3": (
            "email prefix, 3 letters (1 to 2% of all orders)",
            lambda r: search(r.choice(FIRST)[:3]),
        ),
        "page": (
            "status + 30 days, CREATED_DESC, first 50, totalCount",
            lambda r: {
                "filter": {"status": [r.choice(STATUS_NAMES)], **_window(r, 30)},
                "sort": "CREATED_DESC",
                "first": 50,
            },
        ),
        "page_delivered_year": (
            "DELIVERED over the whole year (80% of orders), totalCount",
            lambda r: {"filter": {"status": ["DELIVERED"]}, "sort": "CREATED_DESC", "first": 50},
        ),
        "page_all": (
            "no filter at all: totalCount of every order",
            lambda r: {"sort": r.choice(["CREATED_DESC", "UPDATED_DESC", "TOTAL_DESC"])},
        ),
        "product": ("a whole product name (about 1 product)", lambda r: search(r.choice(names))),
        "product_2": (
            "two words of a name, `Linen Shirt` (about 17 products)",
            lambda r: search(f"{r.choice(MATERIALS)} {r.choice(NOUNS)}"),
        ),
        "product_word": (
            "one word, `Kettle` (1 product in 30: about 6% of orders)",
            lambda r: search(r.choice(NOUNS)),
        ),
        "id_prefix": ("first 8 characters of an order id", lambda r: search(r.choice(ids)[:8])),
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def measure(
    url: str, token: str, pick: Pick, count: int, warmup: int, pid: int
) -> dict[str, Any]:
    """`count` requests one after the other (after `warmup` more), each timed from the first
    byte sent to the last received; and the worker's CPU time per request."""
    parts = urlsplit(url)
    conn = await HttpConnection.open(parts.hostname or "127.0.0.1", parts.port or 80)
    rng = random.Random(7)
    latencies: list[float] = []
    totals: list[int] = []
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    try:
        for n in range(warmup + count):
            body = json.dumps({"query": LIST, "variables": pick(rng)}).encode()
            request = http_post(parts.netloc, "/graphql", body, headers)
            started = time.perf_counter()
            status, answer = await conn.request(request)
            elapsed = time.perf_counter() - started
            data = json.loads(answer)
            if status != 200 or "errors" in data:
                raise RuntimeError(f"{status} {answer[:500]!r}")
            if n == warmup - 1:
                cpu = cpu_seconds(pid)  # after the last warm-up answer
            if n >= warmup:
                latencies.append(elapsed * 1000)
                totals.append(data["data"]["orders"]["totalCount"])
    finally:
        conn.close()
    if not count:
        return {}
    return {
        "requests": count,
        "worker_cpu_ms": (cpu_seconds(pid) - cpu) * 1000 / count,
        "p50_ms": percentile(latencies, 0.5),
        "p90_ms": percentile(latencies, 0.9),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "matches_median": percentile([float(t) for t in totals], 0.5),
    }


async def export(url: str, token: str, pid: int) -> dict[str, Any]:
    """The whole export, read at full speed, with the worker's VmRSS sampled meanwhile."""
    before = rss_mib(pid)
    samples = [before]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(rss_mib(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    size = rows = 0
    started = time.perf_counter()
    first_byte = None
    try:
        async with (
            httpx.AsyncClient(timeout=600) as http,
            http.stream(
                "GET",
                f"{url}/exports/orders.csv",
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            if response.status_code != 200:
                raise RuntimeError(f"export answered {response.status_code}")
            async for chunk in response.aiter_raw():
                if first_byte is None:
                    first_byte = time.perf_counter() - started
                size += len(chunk)
                rows += chunk.count(b"\r\n")
    finally:
        done.set()
        await sampler
    seconds = time.perf_counter() - started
    await asyncio.sleep(2)
    after = rss_mib(pid)
    return {
        "rows": rows - 1,
        "bytes": size,
        "seconds": seconds,
        "rows_per_second": (rows - 1) / seconds,
        "first_byte_ms": (first_byte or 0) * 1000,
        "rss_before_mib": before,
        "rss_peak_mib": max(samples),
        "rss_after_mib": after,
        "rss_growth_mib": max(samples) - before,
    }


async def _database(
    db: BenchDatabase, args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[dict[str, Any], asyncpg.Connection]:
    """The seeded database and a connection to it: made now, or kept from an earlier run
    (`--keep-database`, which records what the seeding made in a table of its own)."""
    if args.keep_database:
        try:
            conn = await db.connect()
        except asyncpg.InvalidCatalogNameError:
            pass
        else:
            log(f"database {db.name}: kept from an earlier run")
            return json.loads(await conn.fetchval("SELECT stats FROM bench_seed")), conn
    log(f"database {db.name}: migrating, seeding {args.orders:,} orders")
    await db.create()
    conn = await db.connect()
    stats = await seed(conn, args.orders, log=log)
    await conn.execute(
        "INSERT INTO users (id, email, is_staff, created_at)"
        " VALUES ($1, 'staff@bench.test', true, now())",
        STAFF_USER,
    )
    if args.keep_database:
        await conn.execute("CREATE TABLE bench_seed AS SELECT $1::text AS stats", json.dumps(stats))
    return stats, conn


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {line}", flush=True)

    problem = await postgres_problem()
    if problem:
        raise SystemExit(problem)
    db, sink = BenchDatabase(args.keep_database), MailSinkProcess()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": os.getloadavg(),
    }
    try:
        results["seed"], conn = await _database(db, args, log)
        try:
            emails = [
                r[0]
                for r in await conn.fetch("SELECT email FROM users ORDER BY random() LIMIT 1000")
            ]
            names = [
                r[0]
                for r in await conn.fetch("SELECT name FROM products ORDER BY random() LIMIT 1000")
            ]
            ids = [
                str(r[0])
                for r in await conn.fetch("SELECT id FROM orders ORDER BY random() LIMIT 1000")
            ]
        finally:
            await conn.close()
        log(f"seeded in {results['seed']['seconds']:.0f} s: {results['seed']['bytes']}")
        await sink.start()
        token = issue_token(
            JWT_SECRET, STAFF_USER, "staff@bench.test", staff=True, ttl_seconds=86400
        )
        async with Stack(db.url, sink.port, workers=1, name="search") as stack:
            results["scenarios"] = {}
            [worker] = stack.worker_pids()
            chosen = {
                name: spec
                for name, spec in scenarios(emails, names, ids).items()
                if not args.only or name in args.only
            }
            # The worker's pool connections, PostgreSQL's catalogue caches and plans: a round
            # of every request first, so that the first scenario does not pay for the others.
            log(f"warm-up: {WARMUP} requests of each scenario")
            for _, pick in chosen.values():
                await measure(stack.url, token, pick, 0, WARMUP, worker)
            for name, (title, pick) in chosen.items():
                count = args.requests if name in MAIN else args.requests // 3
                log(f"{name}: {title}, {count} requests")
                warmup = max(10, count // 10)
                row = await measure(stack.url, token, pick, count, warmup, worker)
                results["scenarios"][name] = {"title": title, **row}
                log(
                    f"    p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms,"
                    f" worker CPU {row['worker_cpu_ms']:.1f} ms,"
                    f" matches ~{row['matches_median']:,.0f}"
                )
            if not args.only or "export" in args.only:
                log("export of every order, streamed")
                results["export"] = await export(stack.url, token, worker)
                log(f"    {results['export']}")
    finally:
        await sink.stop()
        if not args.keep_database:
            await db.drop()
    results["seconds"] = time.perf_counter() - started
    results["loadavg_end"] = os.getloadavg()
    return results


def table(results: dict[str, Any]) -> str:
    seeded = results["seed"]
    lines = [
        f"Run: `python -m bench.search --orders {seeded['orders']}`, {results['date']}, "
        f"{results['seconds'] / 60:.1f} minutes; {seeded['orders']:,} orders, "
        f"{seeded['lines']:,} lines (tables with indexes: orders "
        f"{seeded['bytes']['orders'] / 2**20:,.0f} MiB, order_items "
        f"{seeded['bytes']['order_items'] / 2**20:,.0f} MiB), seeded in {seeded['seconds']:.0f} s;"
        f" load average {results['loadavg_start'][0]:.1f} at the start, "
        f"{results['loadavg_end'][0]:.1f} at the end (2 cores, shared).",
        "",
        "| request (first 50, with totalCount) | requests | matches (median) | p50 ms | p99 ms"
        " | max ms | worker CPU ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results["scenarios"].items():
        lines.append(
            f"| {row['title']} (`{name}`) | {row['requests']} | {row['matches_median']:,.0f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} |"
            f" {row['worker_cpu_ms']:.1f} |"
        )
    e = results.get("export")
    if e is None:
        return "\n".join(lines)
    lines += [
        "",
        f"Export of every order: {e['rows']:,} rows, {e['bytes'] / 2**20:,.0f} MiB in "
        f"{e['seconds']:.1f} s ({e['rows_per_second']:,.0f} rows/s, first byte after "
        f"{e['first_byte_ms']:.0f} ms); the worker's VmRSS {e['rss_before_mib']:.0f} MiB "
        f"before, {e['rss_peak_mib']:.0f} MiB at its peak, {e['rss_after_mib']:.0f} MiB "
        f"after: **{e['rss_growth_mib']:.1f} MiB** of growth.",
    ]
    return "\n".join(lines)


def write_docs(results: dict[str, Any], path: Path) -> None:
    text = path.read_text()
    begin, end = "<!-- search:begin -->", "<!-- search:end -->"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n\n{table(results)}\n\n{end}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300, help="per main scenario")
    parser.add_argument("--output", type=Path, default=RESULTS / "search.json")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these scenarios (or export)")
    parser.add_argument(
        "--keep-database",
        metavar="NAME",
        help="seed the database NAME once and keep it for the next runs (drop it yourself)",
    )
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1, default=str))
    print(table(results))
    if not args.no_docs:
        write_docs(results, ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()
