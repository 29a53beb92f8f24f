"""The mail sender: how fast one `MailSender` sends what the outbox holds, and its CPU per mail.

    .venv/bin/python -m bench.mail [--mails K] [--rate R] [--seconds S] [--accept-ms A]
                                   [--sender-from FILE] [--loop L] [--senders N] [--profile]
                                   [--output FILE]

One PostgreSQL database made for the run (`bench.common.BenchDatabase`, migrated by ordergraph,
dropped afterwards), an SMTP server (aiosmtpd) in a process of its own that accepts every mail
(`--accept-ms`: after that long, as a relay that stores or scans a mail before it answers) and
counts them, and one `MailSender` in a process of its own (`--sender`: Tortoise on the
database, the sender's defaults but for a poll of 50 ms, which stands in for the wake-up a
commit gives the sender of its own process), on uvloop as in a server's worker, where uvicorn
runs it (`--loop asyncio`: on asyncio's own loop), or `--senders N` of them as MAIL_SENDERS
starts in a server. Two parts, each with a fresh sender process:

1. **Backlog.** K receipts (default 2,000; a receipt's size: a table of lines, an address and
   the order link with its token) are committed before the sender starts; the run times it
   from its start until every row is SENT. Reported: mails per second, and CPU per mail of the
   sender's process (`os.times` of that process over the run, user and system, Tortoise's
   start-up excluded), of PostgreSQL (every postgres process of the machine) and of the SMTP
   server (from /proc).
2. **Stream.** Receipts are committed at R per second (default 500, about what one worker
   confirms webhooks at) for S seconds (default 8) while the sender runs: the outbox backlog
   (rows not yet SENT) is sampled every 250 ms. Reported: mails sent within the window, the
   largest backlog and the one at the window's end, and how long the rest took to go.

Both parts check that the SMTP server received each mail once (by Message-ID).
`--sender-from FILE` measures the `MailSender` of another version instead (e.g.
`git show REV:ordergraph/mail/sender.py > /tmp/sender.py`). `--profile` samples the sender
with py-spy over the backlog part (`--gil`: Python's CPU only, not its waits;
`bench.profiling.summarise`). Results: bench/results/mail.json. Not a test: nothing is
asserted, and the machine's load (`load_average`) moves the figures: compare runs made one
after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from bench import profiling
from bench.common import (
    RESULTS,
    BenchDatabase,
    CpuMeter,
    free_port,
    postgres_pids,
    postgres_problem,
    stop_process,
)

POLL_SECONDS = 0.05
ROWS = [
    "dedupe_key",
    "recipient",
    "subject",
    "text_body",
    "html_body",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
]

# An SMTP server that accepts every mail (after `accept_ms`, as a relay that writes and scans
# a mail before it answers) and, when told to stop, says how many it received and how many
# distinct Message-IDs among them.
SINK = """
import asyncio, signal, sys
from aiosmtpd.controller import Controller
seen = []
accept = float(sys.argv[2]) / 1000
class Sink:
    async def handle_DATA(self, server, session, envelope):
        for line in envelope.content.split(b"\\r\\n"):
            if line.lower().startswith(b"message-id:"):
                seen.append(line)
                break
            if not line:
                break
        if accept:
            await asyncio.sleep(accept)
        return "250 OK"
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
c.stop()
print(len(seen), len(set(seen)), flush=True)
"""


def receipt(n: int) -> tuple[str, str, str]:
    """(subject, text, html) of a receipt the size of `messages.compose_receipt`'s, with
    the order link `messages.with_order_link` adds."""
    order = f"{n:08x}-4b1d-4c3e-9a7f-{n:012x}"
    lines = [(f"1 x Product {n % 97:06d}-{i}", f"{15 + i * 7:,.2f} USD") for i in range(3)]
    lines.append(("Total paid", f"{sum(15 + i * 7 for i in range(3)):,.2f} USD"))
    link = (
        f"https://shop.example.com/order-success/{order}?access="
        + "eyJhbGciOiJIUzI1NiJ9."
        + ("x" * 160)
    )
    address = "Shipping to:\nAda Lovelace\n12 Analytical Way\n10115 Berlin\nDE"
    table = "\n".join(f"{left}: {right}" for left, right in lines)
    text = (
        f"Thank you for your order.\nOrder: {order}\n\n{table}\n\n{address}\n\n"
        f"See your order: {link}"
    )
    html_table = "".join(f"<tr><td>{left}</td><td>{right}</td></tr>" for left, right in lines)
    html = (
        f"<html><body><p>Thank you for your order.<br>Order: {order}</p>"
        f"<table>{html_table}</table><p>{address.replace(chr(10), '<br>')}</p>"
        f'<p>See your order: <a href="{link}">{link}</a></p></body></html>'
    )
    return f"Your receipt for order {order[:8]}", text, html


async def commit_receipts(conn: asyncpg.Connection, start: int, count: int) -> None:
    now = datetime.now(UTC)
    records = []
    for n in range(start, start + count):
        subject, text, html = receipt(n)
        key, to = f"receipt:bench-{n}", f"shopper-{n}@bench.test"
        records.append((key, to, subject, text, html, "pending", 0, now, now))
    await conn.copy_records_to_table("outbox_emails", records=records, columns=ROWS)


async def unsent(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM outbox_emails WHERE status <> 'sent'")
    return count


async def all_sent(conn: asyncpg.Connection, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while left := await unsent(conn):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{left} mails still unsent after {timeout:g} s")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------ the sender process


async def sender_process(
    database_url: str, smtp_port: int, sender_from: str, count: int = 1
) -> None:
    """`--sender`: one MailSender (ordergraph's, or the one in the file `sender_from`); starts
    on `go`, answers `cpu` with its CPU seconds so far, stops on `stop` (lines on stdin)."""
    from tortoise import Tortoise

    from ordergraph.db import tortoise_config
    from ordergraph.mail import sender as module
    from ordergraph.settings import Settings

    if sender_from:
        spec = importlib.util.spec_from_file_location("bench_mail_sender", sender_from)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

    logging.basicConfig(level=logging.WARNING)
    await Tortoise.init(config=tortoise_config(database_url, pool_size=5))
    settings = Settings(
        database_url=database_url,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        mail_from="orders@bench.test",
    )
    senders = [module.MailSender(settings, poll_seconds=POLL_SECONDS) for _ in range(count)]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    tasks: list[asyncio.Task[None]] = []
    started = os.times()
    while line := (await reader.readline()).decode().strip():
        if line == "go":
            started = os.times()
            tasks = [asyncio.create_task(sender.run()) for sender in senders]
        elif line == "cpu":
            now = os.times()
            user, system = now.user - started.user, now.system - started.system
            print(json.dumps({"user": user, "system": system}), flush=True)
        elif line == "stop":
            break
    for sender in senders:
        sender.stop()
    await asyncio.gather(*tasks)
    await Tortoise.close_connections()


@dataclass(frozen=True)
class Setup:
    sender_from: str  # a file with the MailSender to measure instead of ordergraph's, or ""
    accept_ms: float  # the SMTP server's delay before it accepts a mail
    loop: str  # the sender's event loop: "uvloop", as in a server's worker, or "asyncio"
    senders: int  # MailSenders in the process, as MAIL_SENDERS


class SenderProcess:
    def __init__(self, database_url: str, smtp_port: int, setup: Setup) -> None:
        self.args = ["-m", "bench.mail", "--sender", database_url, str(smtp_port)]
        self.args += [setup.sender_from, setup.loop, str(setup.senders)]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        if b"ready" not in await self._line():
            raise RuntimeError("the sender process did not start")

    async def _line(self) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        return await asyncio.wait_for(self.process.stdout.readline(), 60)

    def tell(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def cpu(self) -> tuple[float, float]:
        """CPU seconds the sender's process spent since `go`: (user, system)."""
        self.tell("cpu")
        spent = json.loads(await self._line())
        return spent["user"], spent["system"]

    async def stop(self) -> None:
        if self.process is None:
            return
        self.tell("stop")
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            await stop_process(self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class Sink:
    def __init__(self, accept_ms: float = 0.0) -> None:
        self.port = free_port()
        self.accept_ms = accept_ms
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SINK,
            str(self.port),
            str(self.accept_ms),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        if b"ready" not in await asyncio.wait_for(self.process.stdout.readline(), 30):
            raise RuntimeError("the SMTP server did not start")

    async def stop(self) -> tuple[int, int]:
        """(mails received, distinct Message-IDs)."""
        assert self.process is not None and self.process.stdout is not None
        self.process.send_signal(signal.SIGTERM)
        out = await asyncio.wait_for(self.process.stdout.read(), 30)
        await self.process.wait()
        received, distinct = out.split()
        return int(received), int(distinct)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@asynccontextmanager
async def fresh_outbox(url: str, setup: Setup) -> AsyncIterator[tuple[asyncpg.Connection, Sink]]:
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE outbox_emails RESTART IDENTITY")
    sink = Sink(setup.accept_ms)
    await sink.start()
    try:
        yield conn, sink
    finally:
        await conn.close()


def _meter(sender: SenderProcess, sink: Sink) -> CpuMeter:
    return CpuMeter(
        {
            "sender": lambda: [sender.pid],
            "postgres": postgres_pids,
            "smtp server": lambda: [sink.pid],
        }
    )


async def backlog(url: str, setup: Setup, mails: int, profile: Path | None) -> dict[str, Any]:
    async with fresh_outbox(url, setup) as (conn, sink):
        await commit_receipts(conn, 0, mails)
        sender = SenderProcess(url, sink.port, setup)
        await sender.start()
        spy = None
        if profile is not None:
            spy = await asyncio.create_subprocess_exec(
                profiling.py_spy(),
                "record",
                "--pid",
                str(sender.pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--output",
                str(profile),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)  # py-spy attaches
        meter = _meter(sender, sink)
        meter.begin()
        sender.tell("go")
        await all_sent(conn)
        user, system = await sender.cpu()
        cpu = user + system
        spent = meter.end()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await spy.wait()
        await sender.stop()
        received, distinct = await sink.stop()
    wall = spent["wall"]
    result = {
        "mails": mails,
        "seconds": round(wall, 3),
        "mails_per_second": round(mails / wall, 1),
        "sender_cpu_ms_per_mail": round(1000 * cpu / mails, 3),
        "sender_system_cpu_ms_per_mail": round(1000 * system / mails, 3),
        "postgres_cpu_ms_per_mail": round(1000 * spent["postgres"] / mails, 3),
        "smtp_server_cpu_ms_per_mail": round(1000 * spent["smtp server"] / mails, 3),
        "received": received,
        "distinct_message_ids": distinct,
    }
    if profile is not None:
        result["profile"] = profiling.summarise(profile)
    return result


async def stream(url: str, setup: Setup, rate: int, seconds: float) -> dict[str, Any]:
    tick = 0.02  # receipts are committed every 20 ms, as many as are due by then
    total = round(rate * seconds)
    async with fresh_outbox(url, setup) as (conn, sink):
        sender = SenderProcess(url, sink.port, setup)
        await sender.start()
        writer = await asyncpg.connect(url)
        meter = _meter(sender, sink)
        meter.begin()
        sender.tell("go")
        samples: list[tuple[float, int]] = []
        written = 0

        async def sample(watcher: asyncpg.Connection) -> None:
            try:
                while True:
                    samples.append((time.perf_counter() - meter.started, await unsent(watcher)))
                    await asyncio.sleep(0.25)
            finally:
                watcher.terminate()

        sampler = asyncio.create_task(sample(await asyncpg.connect(url)))
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            due = min(round((elapsed + tick) * rate), total)
            if due > written:
                await commit_receipts(writer, written, due - written)
                written = due
            await asyncio.sleep(tick - (time.perf_counter() - start) % tick)
        if written < total:  # the last tick overslept the window
            await commit_receipts(writer, written, total - written)
            written = total
        window = time.perf_counter() - start
        at_end = await unsent(conn)
        await all_sent(conn)
        drained = time.perf_counter() - start - window
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        user, system = await sender.cpu()
        cpu = user + system
        spent = meter.end()
        await writer.close()
        await sender.stop()
        received, distinct = await sink.stop()
    return {
        "rate": rate,
        "window_seconds": round(window, 3),
        "written": written,
        "sent_within_window": written - at_end,
        "backlog_at_window_end": at_end,
        "largest_backlog": max((n for _, n in samples), default=0),
        "drained_seconds_after_window": round(drained, 3),
        "sender_cpu_ms_per_mail": round(1000 * cpu / written, 3),
        "sender_system_cpu_ms_per_mail": round(1000 * system / written, 3),
        "sender_cpu_share": round(cpu / spent["wall"], 3),
        "postgres_cpu_ms_per_mail": round(1000 * spent["postgres"] / written, 3),
        "backlog_samples": [(round(t, 2), n) for t, n in samples],
        "received": received,
        "distinct_message_ids": distinct,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    problem = await postgres_problem()
    if problem:
        raise SystemExit(problem)
    database = BenchDatabase(f"og_bench_mail_{os.getpid()}")
    await database.create()
    try:
        profile = None
        if args.profile:
            if not profiling.available():
                raise SystemExit("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
            profile = Path(tempfile.mkdtemp(prefix="ordergraph-mail-")) / "sender.txt"
        setup = Setup(str(args.sender_from or ""), args.accept_ms, args.loop, args.senders)
        results: dict[str, Any] = {
            "sender": str(args.sender_from or "ordergraph/mail/sender.py"),
            "smtp_accept_ms": args.accept_ms,
            "loop": args.loop,
            "senders": args.senders,
            "load_average": os.getloadavg()[0],
            "backlog": await backlog(database.url, setup, args.mails, profile),
            "stream": await stream(database.url, setup, args.rate, args.seconds),
        }
    finally:
        await database.drop()
    return results


def _print(results: dict[str, Any]) -> None:
    b, s = results["backlog"], results["stream"]
    print(
        f"backlog: {b['mails']} mails in {b['seconds']} s = {b['mails_per_second']}/s;"
        f" CPU per mail: sender {b['sender_cpu_ms_per_mail']} ms"
        f" ({b['sender_system_cpu_ms_per_mail']} of it in the kernel),"
        f" PostgreSQL {b['postgres_cpu_ms_per_mail']} ms,"
        f" SMTP server {b['smtp_server_cpu_ms_per_mail']} ms;"
        f" received {b['received']} ({b['distinct_message_ids']} distinct)"
    )
    print(
        f"stream: {s['written']} mails at {s['rate']}/s over {s['window_seconds']} s:"
        f" {s['sent_within_window']} sent within the window, largest backlog"
        f" {s['largest_backlog']}, {s['backlog_at_window_end']} left at its end, drained"
        f" {s['drained_seconds_after_window']} s later; sender CPU"
        f" {s['sender_cpu_ms_per_mail']} ms per mail ({100 * s['sender_cpu_share']:.0f}% of"
        f" a core); received {s['received']} ({s['distinct_message_ids']} distinct)"
    )
    profile = b.get("profile")
    if profile and profile.get("samples"):
        print("sender profile, self time:", profile["self"][:12])
        print("sender profile, inclusive:", profile["inclusive"][:20])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "mail.json")
    parser.add_argument("--sender-from", type=Path, help="measure the MailSender of this file")
    parser.add_argument("--accept-ms", type=float, default=0.0)
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the sender's event loop"
    )
    parser.add_argument("--senders", type=int, default=1, help="MailSenders (as MAIL_SENDERS)")
    parser.add_argument("--sender", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sender:
        url, port, sender_from, loop, count = args.sender
        factory = uvloop.new_event_loop if loop == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(sender_process(url, int(port), sender_from, int(count)))
        sys.exit(0)
    results = asyncio.run(main(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    _print(results)
    print(f"results: {args.output}")
