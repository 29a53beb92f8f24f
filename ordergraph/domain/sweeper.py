"""The background task that keeps every order settled while the service runs."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from ordergraph.domain.expiry import sweep_overdue_orders
from ordergraph.domain.payments import PaymentServices
from ordergraph.domain.reconcile import reconcile
from ordergraph.domain.refunds import settle_pending_refunds, stale_after
from ordergraph.outgoing_webhooks.deliveries import RETENTION, prune_finished

log = logging.getLogger(__name__)


class Sweeper:
    """Runs `sweep_overdue_orders`, settles pending refunds and prunes old webhook deliveries
    every `SWEEP_INTERVAL_SECONDS` in the server process, and a whole reconciliation every
    `RECONCILE_INTERVAL_SECONDS` (0: never)."""

    def __init__(self, services: PaymentServices) -> None:
        self.services = services
        self._stop = asyncio.Event()

    async def run(self) -> None:
        settings = self.services.settings
        interval = settings.sweep_interval_seconds
        if interval <= 0:
            return
        next_reconcile = time.monotonic() + settings.reconcile_interval_seconds
        while not self._stop.is_set():
            try:
                if settings.reconcile_interval_seconds and time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + settings.reconcile_interval_seconds
                    await self._reconcile()  # which sweeps first
                elif settled := await sweep_overdue_orders(self.services):
                    log.info("sweeper settled %d overdue orders", settled)
                await self._refunds()
                if pruned := await prune_finished(older_than=datetime.now(UTC) - RETENTION):
                    log.info("sweeper pruned %d finished webhook deliveries", pruned)
            except Exception:
                log.exception("sweeper pass failed; trying next round")
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def _refunds(self) -> None:
        """Refunds whose answer was lost, once no request can still be waiting for Stripe."""
        older_than = datetime.now(UTC) - stale_after(self.services.settings)
        if tried := await settle_pending_refunds(self.services, older_than=older_than):
            log.info("sweeper tried %d pending refunds", tried)

    async def _reconcile(self) -> None:
        window = timedelta(hours=self.services.settings.reconcile_window_hours)
        report = await reconcile(self.services, since=datetime.now(UTC) - window)
        for finding in report.findings:
            log.warning(
                "reconcile: %s %s: %s (%s)",
                finding.kind,
                finding.order_id,
                finding.detail,
                finding.action,
            )

    def stop(self) -> None:
        self._stop.set()
