"""Events within this one process: for a single worker, the demo and tests."""

from __future__ import annotations

from ordergraph.events.base import EventTransport, OrderEvent


class MemoryTransport(EventTransport):
    async def publish(self, event: OrderEvent) -> None:
        self.fanout.deliver(event)
