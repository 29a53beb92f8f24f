"""Order events through Redis pub/sub, for deployments that already run Redis.

Events are published after commit (Redis knows nothing of our transactions), on one channel
that every process subscribes to with one connection. Redis pub/sub keeps nothing: a message
published while a listener is disconnected is lost to it. So the listener owns its reconnects
(the client's own silent retries are off for it), backs off while Redis is away, and once
subscribed again tells every subscriber to re-read its order. An idle listener pings, so a
connection that died without a word is noticed too. The whole shop's subscribers re-read what
changed since the listener last heard from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import NoReturn

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ordergraph.events.base import EventTransport, OrderEvent, reconnect_delays, split_channel

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "ordergraph:orders"
PING_SECONDS = 5.0
TIMEOUT_SECONDS = 5.0
FIRST_CONNECT_SECONDS = 5.0

_FAILURES = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class RedisTransport(EventTransport):
    name = "redis"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.channel = split_channel(url, DEFAULT_CHANNEL)
        # The name lets an operator (or a test) find this process's listener in CLIENT LIST.
        self.client_name = f"ordergraph-events:{self.channel}"
        self._publisher: Redis | None = None
        self._subscriber: Redis | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Start listening; a Redis that is not up yet is waited for in the background, and
        `/readyz` says so meanwhile."""
        self._publisher = Redis.from_url(
            self.url,
            socket_connect_timeout=TIMEOUT_SECONDS,
            socket_timeout=TIMEOUT_SECONDS,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        )
        self._subscriber = Redis.from_url(
            self.url,
            socket_connect_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), retries=0),
            client_name=self.client_name,
        )
        self.listen_in_background(self._listen())
        try:
            await asyncio.wait_for(self._subscribed.wait(), FIRST_CONNECT_SECONDS)
        except TimeoutError:
            log.warning("Redis is not answering yet; order events will follow once it does")

    async def stop(self) -> None:
        await super().stop()
        for client in (self._publisher, self._subscriber):
            if client is not None:
                await client.aclose()

    async def publish(self, event: OrderEvent) -> None:
        assert self._publisher is not None, "start() the transport first"
        await self._publisher.publish(self.channel, event.encode())

    async def ping(self) -> bool:
        if not self._subscribed.is_set() or self._publisher is None:
            return False
        try:
            return bool(await self._publisher.ping())
        except _FAILURES:
            return False

    async def _listen(self) -> None:
        assert self._subscriber is not None
        delays = reconnect_delays()
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._read(pubsub)
            except _FAILURES as exc:
                if self._subscribed.is_set():  # it had worked: back off afresh
                    self._subscribed.clear()
                    delays = reconnect_delays()
                delay = next(delays)
                log.warning("Redis listener for order events: %s; retrying in %.1f s", exc, delay)
            finally:
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()
            await asyncio.sleep(delay)

    async def _read(self, pubsub: PubSub) -> NoReturn:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=PING_SECONDS)
            now = loop.time()
            if message is None:
                if now - last_heard > PING_SECONDS + TIMEOUT_SECONDS:
                    raise TimeoutError("Redis did not answer a ping")
                await pubsub.ping()
                continue
            last_heard = now
            if message["type"] == "subscribe":
                if not self._subscribed.is_set():
                    log.info("listening for order events on Redis channel %s", self.channel)
                self._subscribed.set()
                self.reconnected()
                continue
            self.alive()  # in order on one connection: nothing published before was lost
            if message["type"] == "message":
                event = OrderEvent.decode(message["data"])
                if event is None:
                    log.warning("ignoring a message on %s that is not an order event", self.channel)
                else:
                    self.fanout.deliver(event)
