"""The scenarios of the performance table, each measured against its ceiling in the same run.

Each function takes a `Bench` (the database and mail sink of the run) and returns plain dicts
that `bench.report` turns into docs/benchmarks.md. Load always comes from `bench.loadgen` in a
process of its own; CPU seconds of every party (server, emulator, load, PostgreSQL) are read
from /proc around each measurement, since on two cores they all compete.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    JWT_SECRET,
    BenchDatabase,
    CpuMeter,
    MailSinkProcess,
    Stack,
    copy_orders,
    ensure_users,
    free_port,
    make_orders,
    order_count,
    postgres_pids,
    product_ids,
    seed_catalogue,
    stop_process,
    tree,
    wait_http,
)

READ_TAG = "read"
READ_ORDERS = 1_000


@dataclass
class Sizes:
    """How long and how big: `quick` for the documented quick run, `smoke` for the tests."""

    warmup: float = 2.0
    duration: float = 10.0
    concurrency: int = 50
    curve: tuple[int, ...] = (10, 25, 50, 100)
    growth_base: int = 10_000
    growth_high: int = 1_000_000
    growth_concurrency: int = 10
    profile_seconds: float = 8.0
    sub_counts: tuple[int, ...] = (100, 1_000, 3_000, 10_000)
    load_subscribers: tuple[int, ...] = (1_000, 10_000)
    load_rate: int = 200
    load_seconds: float = 10.0

    @classmethod
    def of(cls, mode: str) -> Sizes:
        if mode == "quick":
            return cls(
                warmup=1.0,
                duration=3.0,
                curve=(10, 50, 100),
                growth_high=100_000,
                profile_seconds=3.0,
                sub_counts=(100, 1_000),
                load_subscribers=(2_000,),
                load_rate=200,
                load_seconds=4.0,
            )
        if mode == "smoke":
            return cls(
                warmup=0.3,
                duration=1.0,
                concurrency=4,
                curve=(2, 4),
                growth_base=500,
                growth_high=1_500,
                growth_concurrency=2,
                profile_seconds=1.0,
                sub_counts=(20,),
                load_subscribers=(50,),
                load_rate=20,
                load_seconds=1.0,
            )
        return cls()


@dataclass
class Bench:
    sizes: Sizes
    db: BenchDatabase = field(default_factory=BenchDatabase)
    sink: MailSinkProcess = field(default_factory=MailSinkProcess)
    log: Any = print

    async def __aenter__(self) -> Bench:
        try:
            return await self._set_up()
        except BaseException:
            await self.__aexit__()  # no sink process or database left behind
            raise

    async def _set_up(self) -> Bench:
        await self.db.create()
        await self.sink.start()
        conn = await self.db.connect()
        try:
            await seed_catalogue(conn)
            self.products, self.hot = await product_ids(conn)
            readers = [f"reader-{i}" for i in range(READ_ORDERS)]
            await ensure_users(conn, readers)
            rows = make_orders(
                readers,
                self.products,
                READ_ORDERS,
                lines=5,
                pending=False,
                rng=random.Random(7),
                tag=READ_TAG,
                created=datetime.now(UTC) - timedelta(days=1),
            )
            await copy_orders(conn, rows)
        finally:
            await conn.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sink.stop()
        await self.db.drop()

    def stack(self, workers: int, **kw: Any) -> Stack:
        return Stack(self.db.url, self.sink.port, workers=workers, **kw)

    # ------------------------------------------------------------------ data

    async def top_up_pending(self, count: int, tag: str) -> None:
        """Make sure `count` unconfirmed orders with sessions wait for a webhook."""
        conn = await self.db.connect()
        try:
            have = await conn.fetchval(
                "SELECT count(*) FROM orders WHERE status = 'pending_payment'"
                " AND stripe_checkout_session_id LIKE 'cs_bench_%'"
            )
            missing = count - have
            if missing <= 0:
                return
            users = [f"payer-{i}" for i in range(200)]
            await ensure_users(conn, users)
            rows = make_orders(
                users,
                self.products,
                missing,
                lines=2,
                pending=True,
                rng=random.Random(),
                tag=f"{tag}_{int(time.time() * 1000)}",
            )
            await conn.execute("SET session_replication_role = replica")
            await copy_orders(conn, rows)
        finally:
            await conn.close()

    async def grow_to(self, total: int, chunk: int = 100_000) -> dict[str, Any]:
        """Add delivered orders (with history, tracker, event, receipt rows) up to `total`."""
        conn = await self.db.connect()
        started = time.perf_counter()
        try:
            have = await order_count(conn)
            users = [f"old-{i}" for i in range(max(1, total // 10))]
            await ensure_users(conn, users)
            await conn.execute("SET session_replication_role = replica")
            added = 0
            rng = random.Random(11)
            while have + added < total:
                n = min(chunk, total - have - added)
                rows = make_orders(
                    users,
                    self.products,
                    n,
                    lines=2,
                    pending=False,
                    rng=rng,
                    tag=f"old{have + added}",
                    created=datetime.now(UTC) - timedelta(days=30),
                )
                await copy_orders(conn, rows)
                added += n
            await conn.execute("SET session_replication_role = DEFAULT")
            await conn.execute("VACUUM ANALYZE")
            return {
                "orders": await order_count(conn),
                "added": added,
                "seconds": time.perf_counter() - started,
            }
        finally:
            await conn.close()

    async def settle_outbox(self) -> None:
        """Mark every queued mail sent, so that the next scenario's server does not spend its
        CPU sending the receipts of this one (not timed)."""
        conn = await self.db.connect()
        try:
            await conn.execute(
                "UPDATE outbox_emails SET status = 'sent', sent_at = now(), claimed_until = NULL"
                " WHERE status IN ('pending', 'sending')"
            )
        finally:
            await conn.close()

    async def vacuum(self) -> None:
        conn = await self.db.connect()
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()

    # ------------------------------------------------------------------ load

    async def load(
        self, kind: str, *, stack: Stack | None = None, url: str | None = None, **spec: Any
    ) -> dict[str, Any]:
        """Run `bench.loadgen` once in its own process; its result plus CPU per party."""
        sizes = self.sizes
        full = {
            "kind": kind,
            "database_url": self.db.url,
            "url": url or (stack.url if stack else None),
            "warmup": sizes.warmup,
            "duration": sizes.duration,
            "concurrency": sizes.concurrency,
            **spec,
        }
        folder = Path(tempfile.mkdtemp(prefix="ordergraph-bench-"))
        spec_path, out_path = folder / "spec.json", folder / "result.json"
        spec_path.write_text(json.dumps(full))
        loadgen = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            str(spec_path),
            str(out_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        server_pids = stack.server_pids if stack else (lambda: [])
        emulator_pids = stack.emulator_pids if stack else (lambda: [])
        sink = self.sink.process
        meter = CpuMeter(
            {
                "server": server_pids,
                "emulator": emulator_pids,
                "load": lambda: tree(loadgen.pid),
                "postgres": postgres_pids,
                "mail sink": lambda: [sink.pid] if sink and sink.returncode is None else [],
            }
        )
        cpu: dict[str, float] = {}
        assert loadgen.stdout is not None and loadgen.stderr is not None
        errors = asyncio.create_task(loadgen.stderr.read())
        async for line in loadgen.stdout:
            if line.strip() == b"window-start":
                meter.begin()
            elif line.strip() == b"window-end":
                cpu = meter.end()
        await loadgen.wait()
        err = await errors
        if loadgen.returncode:
            raise RuntimeError(f"loadgen {kind} failed: {err.decode()[-3000:]}")
        result: dict[str, Any] = json.loads(out_path.read_text())
        ops = max(1, result["ok"] + result["errors"])
        result["cpu_seconds"] = cpu
        # CPU per operation of each party during the measured window.
        result["cpu_ms_per_op"] = {k: v * 1000 / ops for k, v in cpu.items() if k != "wall"}
        result["loadavg"] = os.getloadavg()
        ratio = f" errors {result['errors']}" if result["errors"] else ""
        self.log(
            f"    {kind:<13} c={full['concurrency']:<3} {result['throughput']:8.0f}/s"
            f"  p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms{ratio}"
        )
        if result["errors"] or result["error_samples"]:
            for sample in result["error_samples"][:2]:
                self.log(f"      e.g. {sample[:300]}")
        return result


def ratio(service: dict[str, Any], ceiling: dict[str, Any]) -> float:
    return service["throughput"] / ceiling["throughput"] if ceiling["throughput"] else 0.0


# ---------------------------------------------------------------------- scenarios


async def checkout(bench: Bench, workers: int, mode: str, concurrency: int) -> dict[str, Any]:
    tag = f"w{workers}{mode}c{concurrency}"
    async with bench.stack(workers, name=f"checkout-{tag}") as stack:
        ceiling = await bench.load(
            "checkout_sql", stack=stack, mode=mode, tag=f"{tag}sql", concurrency=concurrency
        )
        # As autovacuum would (it is off on some machines): the ceiling's orders and prepared
        # carts must not leave the service planning on statistics of much smaller tables.
        await bench.vacuum()
        service = await bench.load(
            "checkout", stack=stack, mode=mode, tag=tag, concurrency=concurrency
        )
    return {"ceiling": ceiling, "service": service, "ratio": ratio(service, ceiling)}


def _pool(sizes: Sizes, rate: float) -> int:
    return int(rate * (sizes.warmup + sizes.duration) * 1.2) + 200


async def webhook(bench: Bench, workers: int, concurrency: int | None = None) -> dict[str, Any]:
    concurrency = concurrency or bench.sizes.concurrency
    sizes = bench.sizes
    async with bench.stack(workers, name=f"webhook-w{workers}") as stack:
        pool = _pool(sizes, 2500)
        await bench.top_up_pending(pool, f"w{workers}s")
        ceiling = await bench.load("webhook_sql", stack=stack, pool=pool, concurrency=concurrency)
        pool = _pool(sizes, 1000)
        await bench.top_up_pending(pool, f"w{workers}")
        service = await bench.load("webhook", stack=stack, pool=pool, concurrency=concurrency)
    await bench.settle_outbox()
    return {"ceiling": ceiling, "service": service, "ratio": ratio(service, ceiling)}


class BareServer:
    """`bench.bare` under uvicorn with `workers` workers."""

    def __init__(self, database_url: str, workers: int) -> None:
        self.database_url = database_url
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.gettempdir()) / f"ordergraph-bench-bare-{self.port}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> BareServer:
        env = {**os.environ, "DATABASE_URL": self.database_url, "JWT_SECRET": JWT_SECRET}
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.bare",
                str(self.port),
                str(self.workers),
                env=env,
                stdout=out,
                stderr=out,
            )
        await wait_http(f"{self.url}/healthz", self.process, self.log)
        await asyncio.sleep(0.5 * self.workers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_process(self.process)

    def pids(self) -> list[int]:
        return tree(self.process.pid) if self.process else []


async def order_query(bench: Bench, workers: int) -> dict[str, Any]:
    async with BareServer(bench.db.url, workers) as bare:
        fake = type("S", (), {"url": bare.url, "server_pids": bare.pids, "emulator_pids": list})
        ceiling = await bench.load("bare", stack=fake, tag=READ_TAG)  # type: ignore[arg-type]
    async with bench.stack(workers, name=f"order-w{workers}") as stack:
        service = await bench.load("order", stack=stack, tag=READ_TAG)
    return {"ceiling": ceiling, "service": service, "ratio": ratio(service, ceiling)}


async def growth_point(bench: Bench) -> dict[str, Any]:
    """Checkout and webhook latency at low concurrency with the orders now in the database."""
    sizes = bench.sizes
    c = sizes.growth_concurrency
    await bench.vacuum()
    conn = await bench.db.connect()
    try:
        orders = await order_count(conn)
    finally:
        await conn.close()
    async with bench.stack(1, name="growth") as stack:
        checkout_ = await bench.load(
            "checkout", stack=stack, mode="spread", tag=f"growth{orders}", concurrency=c
        )
        pool = _pool(sizes, 600)
        await bench.top_up_pending(pool, f"g{orders}")
        webhook_ = await bench.load("webhook", stack=stack, pool=pool, concurrency=c)
    await bench.settle_outbox()
    return {"orders": orders, "checkout": checkout_, "webhook": webhook_}


async def profile(bench: Bench, kind: str, out_dir: Path, **spec: Any) -> dict[str, Any]:
    """py-spy on the one worker of `ordergraph serve` while `kind` load runs."""
    from bench import profiling

    if not profiling.available():
        return {"skipped": "py-spy is not installed (.venv/bin/pip install -e '.[bench]')"}
    seconds = bench.sizes.profile_seconds
    raw = out_dir / f"profile-{kind}.txt"
    async with bench.stack(1, name=f"profile-{kind}") as stack:
        if kind == "webhook":
            spec["pool"] = _pool(bench.sizes, 1000)
            await bench.top_up_pending(spec["pool"], "prof")
        load = asyncio.create_task(
            bench.load(kind, stack=stack, warmup=1.0, duration=seconds + 1.5, **spec)
        )
        await asyncio.sleep(1.0)
        messages = await profiling.record(stack.worker_pids()[0], seconds, raw)
        result = await load
    await bench.settle_outbox()
    summary = profiling.summarise(raw)
    summary["load"] = {k: result[k] for k in ("throughput", "p50_ms", "p99_ms")}
    summary["py_spy"] = messages[-500:]
    summary["raw"] = str(raw)
    return summary


async def sql_counts(bench: Bench) -> dict[str, Any]:
    await bench.top_up_pending(10, "sqlcount")
    out = Path(tempfile.mkdtemp(prefix="ordergraph-bench-")) / "sql.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.sqlcount",
        bench.db.url,
        str(bench.sink.port),
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    text, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"sqlcount failed: {text.decode()[-3000:]}")
    counts: dict[str, Any] = json.loads(out.read_text())
    return counts
