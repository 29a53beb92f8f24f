"""ordergraph's benchmark suite: every scenario of the performance table, each against the
ceiling measured in the same run.

    .venv/bin/python -m bench.run [--quick | --smoke] [--workers 1 2] [--only NAME ...]

Creates its own PostgreSQL database (dropped afterwards), seeds it with asyncpg (COPY), runs
the Stripe emulator, a mail sink and `ordergraph serve --workers N` as processes of their own,
and drives load from another process (`bench.loadgen`). Results go to bench/results/ (JSON),
the charts to docs/benchmarks/ and the tables to docs/benchmarks.md (`--smoke` writes only
the JSON it is asked for). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.common import RESULTS, ROOT, percentile, postgres_problem
from bench.scenarios import Bench, Sizes

ALL = ("growth", "checkout", "webhook", "order", "curve", "profile", "sql", "subscriptions")


def machine() -> dict[str, Any]:
    def run(cmd: str) -> str:
        try:
            return subprocess.run(
                shlex.split(cmd), capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    code = os.environ.get("ORDERGRAPH_BENCH_CODE") or (
        f"git {run('git -C ' + str(ROOT) + ' rev-parse --short HEAD')}"
        + (
            " with uncommitted changes in ordergraph/"
            if run(f"git -C {ROOT} status --porcelain ordergraph")
            else ""
        )
    )
    return {
        "code": code,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "free_h": run("free -h"),
        "python": platform.python_version(),
        "postgres": run("psql --version"),
        "loadavg_start": os.getloadavg(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = Sizes.of(mode)
    only = set(args.only or ALL)
    started = time.perf_counter()
    out_dir = Path(tempfile.mkdtemp(prefix="ordergraph-bench-"))
    results: dict[str, Any] = {
        "meta": {
            **machine(),
            "mode": mode,
            "command": "python -m bench.run"
            + {"full": "", "quick": " --quick"}.get(mode, " --smoke"),
            "workers": args.workers,
            "sizes": sizes.__dict__,
        },
        "workers": {},
    }

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {line}", flush=True)

    problem = await postgres_problem()
    if problem:
        raise SystemExit(problem)
    results["errors"] = {}

    async def step(name: str, coro: Any) -> Any:
        """Run one scenario; a failure is recorded and the run goes on to the next one."""
        try:
            return await coro
        except Exception as exc:
            log(f"    {name} FAILED: {exc!r}"[:2000])
            results["errors"][name] = repr(exc)[:4000]
            return None
        finally:
            if args.checkpoint:
                args.checkpoint.write_text(json.dumps(results, indent=1, default=str))

    async with Bench(sizes, log=log) as bench:
        c = sizes.concurrency
        if "growth" in only:
            log(f"growth: base with {sizes.growth_base:,} orders")
            await bench.grow_to(sizes.growth_base)
            base = await step("growth base", scenarios.growth_point(bench))
            results["growth"] = {"base": base} if base else {}
        for workers in args.workers:
            row: dict[str, Any] = {}
            results["workers"][str(workers)] = row
            plan = []
            if "checkout" in only:
                plan += [
                    ("checkout_spread", "checkout, 2-line carts over 10,000 products", "spread"),
                    ("checkout_hot", "checkout, one hot product", "hot"),
                ]
            if "webhook" in only:
                plan.append(("webhook", "webhook checkout.session.completed", None))
            if "order" in only:
                plan.append(("order", "order query (5 lines) by its owner", None))
            for key, title, mode_ in plan:
                log(f"workers={workers}: {title}, c={c}")
                if key.startswith("checkout"):
                    coro = scenarios.checkout(bench, workers, mode_ or "spread", c)
                elif key == "webhook":
                    coro = scenarios.webhook(bench, workers)
                else:
                    coro = scenarios.order_query(bench, workers)
                value = await step(f"workers={workers} {key}", coro)
                if value is not None:
                    row[key] = value
        if "curve" in only:
            workers = args.workers[0]
            log(f"checkout latency against concurrency, workers={workers}")
            points = []
            for conc in sizes.curve:
                known = results["workers"].get(str(workers), {}).get("checkout_spread")
                if conc == c and known is not None:
                    points.append({"concurrency": conc, **known})
                    continue
                point = await step(
                    f"curve c={conc}", scenarios.checkout(bench, workers, "spread", conc)
                )
                if point is not None:
                    points.append({"concurrency": conc, **point})
            results["curve"] = {"workers": workers, "points": points}
        if "sql" in only:
            log("SQL statements per request")
            results["sql"] = await step("sql", scenarios.sql_counts(bench)) or {}
        if "profile" in only:
            results["profiles"] = {}
            for kind, spec in (
                ("checkout", {"mode": "spread", "tag": "prof"}),
                ("webhook", {}),
                ("order", {"tag": scenarios.READ_TAG}),
            ):
                log(f"profile (py-spy, one worker): {kind}")
                profiled = await step(
                    f"profile {kind}", scenarios.profile(bench, kind, out_dir, **spec)
                )
                if profiled is not None:
                    results["profiles"][kind] = profiled
        if "growth" in only and results.get("growth"):
            log(f"growth: adding orders up to {sizes.growth_high:,} (COPY)")
            seeded = await bench.grow_to(sizes.growth_high)
            log(f"    {seeded['added']:,} orders added in {seeded['seconds']:.0f} s")
            results["growth"]["seeding"] = seeded
            high = await step("growth high", scenarios.growth_point(bench))
            if high is not None:
                results["growth"]["high"] = high
        if "subscriptions" in only:
            results["subscriptions"] = await subscriptions(bench, log, step)
    results["meta"]["seconds"] = time.perf_counter() - started
    results["meta"]["loadavg_end"] = os.getloadavg()
    log(f"done in {results['meta']['seconds']:.0f} s")
    return results


async def subscriptions(bench: Bench, log: Any, step: Any) -> dict[str, Any]:
    """The colleague's one-order bench (bench.subscriptions) for 100 subscribers, memory and
    the delay curve; then bench.subscriptions_load for subscribers each on their own order
    under a stream of changes."""
    from bench import subscriptions as one_order
    from bench import subscriptions_load

    sizes = bench.sizes
    out: dict[str, Any] = {"one_order": [], "own_orders": []}
    subscriptions_load.raise_open_files(max([*sizes.sub_counts, *sizes.load_subscribers]))
    log(f"subscriptions, one order, one change: {', '.join(map(str, sizes.sub_counts))}")
    for count in sizes.sub_counts:
        r = await step(
            f"subscriptions one order {count}",
            one_order.once(bench.db, bench.sink.port, count, "postgres"),
        )
        if r is None:
            out["one_order_error"] = f"{count} subscribers: see errors"
            continue
        d = sorted(r.delays_ms)
        out["one_order"].append(
            {
                "subscribers": r.subscribers,
                "received": len(d),
                "connect_seconds": r.connect_seconds,
                "memory_per_1000_mib": r.memory_per_1000_mib,
                "webhook_ms": r.webhook_ms,
                "p50_ms": percentile(d, 0.5),
                "p99_ms": percentile(d, 0.99),
                "max_ms": d[-1] if d else None,
            }
        )
        log(f"    {r.line()}")
    for count in sizes.load_subscribers:
        log(f"subscriptions, each on its own order: {count:,} at {sizes.load_rate}/s")
        own = await step(
            f"subscriptions own orders {count}",
            subscriptions_load.run_once(
                bench.db.url, bench.sink.port, count, sizes.load_rate, sizes.load_seconds, log=log
            ),
        )
        if own is not None:
            out["own_orders"].append(own)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short runs, 100k-order growth")
    size.add_argument("--smoke", action="store_true", help="seconds: proves every scenario runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", choices=ALL, help="run only these scenarios")
    parser.add_argument("--output", type=Path, help="results JSON (default bench/results/)")
    parser.add_argument(
        "--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md and charts"
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    output = args.output or RESULTS / f"{mode}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    args.checkpoint = output.with_suffix(".partial.json")
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(run(args))
    output.write_text(json.dumps(results, indent=1, default=str))
    args.checkpoint.unlink(missing_ok=True)
    print(f"results: {output}")
    if not args.no_docs and mode != "smoke":
        from bench import report

        written = report.write(results, ROOT / "docs")
        print("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))


if __name__ == "__main__":
    sys.exit(main())
