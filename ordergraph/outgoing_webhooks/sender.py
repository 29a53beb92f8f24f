"""The background task that POSTs due deliveries to the shop's endpoints.

Each process runs one sender with WEBHOOK_CONCURRENCY slots. A slot holds one claimed
delivery for at most WEBHOOK_TIMEOUT_SECONDS, and one endpoint may take at most half the
slots of a process, so an endpoint that hangs or is slow costs its own deliveries time and
never holds up other endpoints; requests of the service itself never wait for a delivery.
Redirects are not followed (a 3xx is a failure) and at most `MAX_RESPONSE_BYTES` of an answer
are read: the status is what counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from ordergraph import metrics
from ordergraph.models import DeliveryStatus
from ordergraph.outgoing_webhooks import signing
from ordergraph.outgoing_webhooks.deliveries import (
    Claimed,
    claim_due,
    record_delivered,
    record_failed,
)
from ordergraph.outgoing_webhooks.events import recorded_since, sender_wakeup
from ordergraph.outgoing_webhooks.fan_out import fan_out_all
from ordergraph.outgoing_webhooks.http import HookClient
from ordergraph.outgoing_webhooks.targets import Resolver, TargetRefused, system_resolver
from ordergraph.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
OWN_PROCESS_POLL_SECONDS = 0.1
MAX_RESPONSE_BYTES = 4096
USER_AGENT = b"ordergraph-webhooks/1"
SIGNATURE = signing.HEADER.encode()
SHUTDOWN_GRACE_SECONDS = 2.0


class WebhookSender:
    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver = system_resolver,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.settings = settings
        self.poll_seconds = poll_seconds
        self.timeout = float(settings.webhook_timeout_seconds)
        # Longer than any attempt can take (it is cut at `timeout`), so a live sender never
        # loses its claim; a dead sender's delivery is due again once it runs out.
        self.lease = timedelta(seconds=2 * self.timeout + 5)
        self.retry_base = timedelta(milliseconds=settings.webhook_retry_base_ms)
        self.retry_for = timedelta(hours=settings.webhook_retry_hours)
        self.slots = settings.webhook_concurrency
        self.per_endpoint = max(1, self.slots // 2)
        self.client = HookClient(
            resolver,
            allow_private=settings.webhook_allow_private_targets,
            max_idle_per_origin=max(1, self.slots),
            max_response_bytes=MAX_RESPONSE_BYTES,
        )
        self.answered = AnsweredDeliveries()
        self.in_flight: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.soonest_retry: datetime | None = None
        # When the last fan-out began (time.monotonic()): a pass that follows a delivery's
        # answer need not look for events again.
        self.fanned_out_at = float("-inf")
        self._stopping = False

    async def run(self) -> None:
        if self.slots == 0:
            return
        wakeup = sender_wakeup()
        try:
            while not self._stopping:
                wakeup.clear()
                try:
                    await self.fill_slots()
                except Exception:
                    log.exception("webhook sender pass failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=self.next_pass_in())
        finally:
            await self.close()

    def next_pass_in(self) -> float:
        """Seconds until the next pass: the poll, or sooner when a retry of ours is due."""
        wait = self.poll_seconds
        if self.soonest_retry is not None:
            until = (self.soonest_retry - datetime.now(UTC)).total_seconds()
            wait = min(wait, max(until, 0.0))
            if until <= self.poll_seconds:  # this pass's wait covers it
                self.soonest_retry = None
        return wait

    def stop(self) -> None:
        self._stopping = True
        sender_wakeup().set()

    async def close(self) -> None:
        """Give the deliveries under way a moment to finish, then cut them: a cut delivery
        keeps its claim until the lease runs out, and is sent again after that."""
        if self.tasks:
            _, unfinished = await asyncio.wait(self.tasks, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self.answered.writer is not None:
            await asyncio.gather(self.answered.writer, return_exceptions=True)
        await self.client.aclose()

    async def fill_slots(self) -> None:
        """Write the deliveries of the events recorded meanwhile (when one of this process
        was, or a poll's time has passed), then claim due deliveries, a batch at a time,
        until the slots are full or none is due."""
        now = time.monotonic()
        if recorded_since(self.fanned_out_at) or now - self.fanned_out_at >= self.poll_seconds:
            self.fanned_out_at = now
            await fan_out_all()
        while not self._stopping and (free := self.slots - len(self.tasks)) > 0:
            batch = await claim_due(
                self.lease, limit=free, per_endpoint=self.per_endpoint, in_flight=self.in_flight
            )
            for claimed in batch:
                endpoint = claimed.delivery.endpoint_id
                self.in_flight[endpoint] += 1
                task = asyncio.create_task(self.send(claimed), name="ordergraph-webhook-delivery")
                self.tasks.add(task)
                task.add_done_callback(functools.partial(self._done, endpoint=endpoint))
            if len(batch) < free:
                return

    def _done(self, task: asyncio.Task[None], endpoint: str) -> None:
        self.tasks.discard(task)
        self.in_flight[endpoint] -= 1
        if self.in_flight[endpoint] <= 0:
            del self.in_flight[endpoint]
        sender_wakeup().set()  # a slot is free, and the order's next delivery may be due

    async def send(self, claimed: Claimed) -> None:
        """One attempt, and its outcome recorded (or, if that fails, left to the lease)."""
        try:
            await self.attempt(claimed)
        except Exception:
            log.exception("webhook delivery %s: recording its outcome failed", claimed.delivery.id)

    async def attempt(self, claimed: Claimed) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                status = await self.post(claimed)
        except TargetRefused as exc:
            await self.failed(claimed, None, f"refused: {exc}", outcome="refused")
            return
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, TimeoutError):
                error = f"no answer within {self.timeout:g} s"
            await self.failed(claimed, None, error)
            return
        if 200 <= status < 300:
            if await self.answered.record(claimed, status):
                metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
                delay = datetime.now(UTC) - claimed.delivery.created_at
                metrics.WEBHOOK_DELAY_SECONDS.observe(delay.total_seconds())
            return
        await self.failed(claimed, status, f"HTTP {status}")

    async def failed(
        self, claimed: Claimed, status: int | None, error: str, *, outcome: str | None = None
    ) -> None:
        result = await record_failed(
            claimed,
            response_status=status,
            error=error,
            base=self.retry_base,
            retry_for=self.retry_for,
        )
        if result is None:
            return
        delivery = claimed.delivery
        recorded, retry = result
        if recorded == DeliveryStatus.PENDING:
            self.soonest_retry = min(self.soonest_retry or retry, retry)
        if recorded == DeliveryStatus.DEAD:
            log.error(
                "webhook delivery %s to %s is dead after %d attempts: %s",
                delivery.id,
                claimed.url,
                delivery.attempts,
                error,
            )
        else:
            log.warning(
                "webhook delivery %s to %s failed (attempt %d): %s",
                delivery.id,
                claimed.url,
                delivery.attempts,
                error,
            )
        label = "dead" if recorded == DeliveryStatus.DEAD else (outcome or "retried")
        metrics.WEBHOOK_DELIVERIES.labels(label).inc()

    async def post(self, claimed: Claimed) -> int:
        delivery = claimed.delivery
        headers = [
            (b"Content-Type", b"application/json"),
            (b"User-Agent", USER_AGENT),
            (SIGNATURE, signing.signature_header(claimed.secret, claimed.body).encode()),
            (b"Ordergraph-Event-Id", delivery.event_id.encode()),
            (b"Ordergraph-Delivery-Id", str(delivery.id).encode()),
            (b"Ordergraph-Delivery-Attempt", str(delivery.attempts).encode()),
        ]
        return await self.client.post(claimed.url, headers, claimed.body.encode())


class AnsweredDeliveries:
    """Deliveries answered 2xx, recorded DELIVERED together: the first answer is written at
    once, and those that come while a write is under way go in the next write, so under load
    one statement records many deliveries and when idle none waits for a batch to fill."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Claimed, int, asyncio.Future[bool]]] = []
        self.writer: asyncio.Task[None] | None = None

    async def record(self, claimed: Claimed, response_status: int) -> bool:
        """Whether the delivery was recorded (False: this sender no longer held its claim)."""
        recorded = asyncio.get_running_loop().create_future()
        self.waiting.append((claimed, response_status, recorded))
        if self.writer is None:
            self.writer = asyncio.create_task(self.write(), name="ordergraph-webhook-outcomes")
        return await recorded

    async def write(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    ids = await record_delivered([(c, status) for c, status, _ in batch])
                except Exception as exc:
                    for _, _, recorded in batch:
                        if not recorded.done():
                            recorded.set_exception(exc)
                    continue
                for claimed, _, recorded in batch:
                    if not recorded.done():
                        recorded.set_result(claimed.delivery.id in ids)
        finally:
            self.writer = None


async def send_until_stopped(settings: Settings, *, concurrency: int) -> None:
    """`ordergraph send-webhooks`: a process that only sends, so that with
    WEBHOOK_CONCURRENCY=0 on the server processes the requests never share a CPU with
    deliveries. Stops on SIGTERM or SIGINT, leaving what it was sending to the lease."""
    from tortoise import Tortoise

    from ordergraph.db import tortoise_config

    await Tortoise.init(config=tortoise_config(settings.database_url))
    # No commit of this process wakes it: it looks for due deliveries often instead (a claim
    # that finds nothing is one cheap read of a partial index).
    sender = WebhookSender(
        dataclasses.replace(settings, webhook_concurrency=concurrency),
        poll_seconds=OWN_PROCESS_POLL_SECONDS,
    )
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, sender.stop)
    log.info("sending outgoing webhooks, %d at once", concurrency)
    try:
        await sender.run()
    finally:
        await Tortoise.close_connections()
