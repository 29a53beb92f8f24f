"""How many subscribers one ordergraph process holds, and how fast a payment reaches them all.

    .venv/bin/python -m bench.subscriptions [--subscribers 1000,10000] [--events postgres]

For each count N, a fresh `ordergraph serve` process on a PostgreSQL database made for the run
(dropped after it), with the Stripe emulator and a mail sink (`bench.common`). N WebSocket
clients (graphql-transport-ws, the success page's selection of the order) all follow the one
order that the emulator's signed `checkout.session.completed` then confirms: the worst case,
where every subscriber receives the change. Reported:

- memory: the server's resident memory after the N subscribers connected and received their
  first message, less before, per 1,000 subscribers;
- delay: from the webhook's 2xx (as this process hears the emulator's answer) to each
  subscriber receiving PAYMENT_CONFIRMED: p50, p99, and max (the last subscriber). Negative
  means the message arrived before the answer;
- the server's CPU time per message sent, from the webhook to the last message, and the CPU
  that other processes on the machine took meanwhile.

Clients and server share the machine's cores, so the delays include the clients' own work and
anything else running; the server's CPU per message does not.
Not a test: it asserts nothing but that every subscriber got the change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import websockets
from websockets.typing import Subprotocol

from bench.common import (
    JWT_SECRET,
    BenchDatabase,
    CpuMeter,
    MailSinkProcess,
    Stack,
    percentile,
    postgres_problem,
    rss_mib,
)
from ordergraph.auth import issue_token

REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECT_BATCH = 250

SUBSCRIBE = json.dumps(
    {
        "id": "1",
        "type": "subscribe",
        "payload": {
            "query": """subscription($id: ID!) { orderStatusChanged(orderId: $id) {
                id status paymentStatus isLocked paidAt expiresAt updatedAt
                total { amount currency }
                lines { productId productName quantity unitPrice { amount } lineTotal { amount } }
                shippingAddress { name line1 city postalCode country }
                history { status reason at }
            } }""",
            "variables": {"id": "ORDER_ID"},
        },
    }
)


@dataclass
class Result:
    subscribers: int
    connect_seconds: float
    memory_per_1000_mib: float
    webhook_ms: float
    delays_ms: list[float]
    cpu: dict[str, float]

    def line(self) -> str:
        return (
            f"{self.subscribers:>11,} | {len(self.delays_ms):>8,} | {self.connect_seconds:>7.1f} s"
            f" | {self.memory_per_1000_mib:>6.1f} MiB | {self.webhook_ms:>7.0f} ms"
            f" | {percentile(self.delays_ms, 0.5):>7.0f} ms"
            f" | {percentile(self.delays_ms, 0.99):>7.0f} ms | {max(self.delays_ms):>7.0f} ms"
            f" | {self.cpu['server'] / self.subscribers * 1e6:>5.0f} us"
            f" | {self.cpu['others']:>5.1f} s"
        )


HEADER = (
    "subscribers | received | connect   | mem/1000   | webhook   | p50       | p99       "
    "| max       | server CPU/message | others' CPU meanwhile"
)


class Subscriber:
    """One client: subscribes, takes the first message, then times the next one."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self.received_at: float | None = None
        self.status: str | None = None

    @classmethod
    async def connect(cls, url: str, token: str, order_id: str) -> Subscriber:
        socket = await websockets.connect(
            url,
            subprotocols=[Subprotocol("graphql-transport-ws")],
            compression=None,
            ping_interval=None,
            open_timeout=60,
            max_queue=4,
        )
        await socket.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(SUBSCRIBE.replace("ORDER_ID", order_id))
        first = json.loads(await socket.recv())
        assert first["payload"]["data"]["orderStatusChanged"]["status"] == "PENDING_PAYMENT", first
        return cls(socket)

    async def wait_for_change(self) -> None:
        message = await self.socket.recv()
        self.received_at = time.perf_counter()
        self.status = json.loads(message)["payload"]["data"]["orderStatusChanged"]["status"]


def raise_open_files(needed: int) -> None:
    """Each subscriber is a socket here and one in the server, which inherits this limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if needed + 200 > hard:
        raise SystemExit(f"{needed} subscribers need more open files than the limit {hard}")


async def place_order(http: httpx.AsyncClient, url: str) -> tuple[str, str]:
    """A product, a cart and a checkout through the API: (order id, shopper's token)."""
    staff = issue_token(JWT_SECRET, "bench-staff", "staff@bench.test", staff=True)
    shopper = issue_token(JWT_SECRET, f"shopper-{secrets.token_hex(4)}", "s@bench.test")

    async def gql(query: str, token: str, **variables: Any) -> dict[str, Any]:
        response = await http.post(
            f"{url}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {token}"},
        )
        body: dict[str, Any] = response.json()
        assert "errors" not in body, body
        return body["data"]

    product = await gql(
        'mutation($sku: String!) { upsertProduct(input: {sku: $sku, name: "Tee",'
        " price: 2500, stock: 100}) { product { id } } }",
        staff,
        sku=f"BENCH-{secrets.token_hex(3)}",
    )
    await gql(
        "mutation($p: ID!) { addToCart(productId: $p, quantity: 2) { cart { itemCount } } }",
        shopper,
        p=product["upsertProduct"]["product"]["id"],
    )
    checkout = await gql("mutation { checkout { orderId userErrors { message } } }", shopper)
    return checkout["checkout"]["orderId"], shopper


async def once(database: BenchDatabase, smtp_port: int, count: int, events: str) -> Result:
    """A fresh server with `count` subscribers of one order, then the payment for it."""
    events_url = {
        "memory": "memory://",
        "postgres": database.url,
        "redis": f"{REDIS_URL}?channel=ordergraph-bench-{secrets.token_hex(4)}",
    }[events]
    async with (
        Stack(database.url, smtp_port, events_url=events_url, name="subscriptions") as stack,
        httpx.AsyncClient(timeout=60) as http,
    ):
        assert stack.server is not None
        order_id, token = await place_order(http, stack.url)
        connection = await database.connect()
        try:
            session_id = await connection.fetchval(
                "SELECT stripe_checkout_session_id FROM orders WHERE id = $1", order_id
            )
        finally:
            await connection.close()

        before = rss_mib(stack.server.pid)
        started = time.perf_counter()
        ws = stack.url.replace("http://", "ws://") + "/graphql"
        subscribers: list[Subscriber] = []
        for offset in range(0, count, CONNECT_BATCH):
            batch = min(CONNECT_BATCH, count - offset)
            subscribers += await asyncio.gather(
                *(Subscriber.connect(ws, token, order_id) for _ in range(batch))
            )
        connect_seconds = time.perf_counter() - started
        await asyncio.sleep(1)  # let the server settle before reading its memory
        after = rss_mib(stack.server.pid)

        waiting = [asyncio.create_task(s.wait_for_change()) for s in subscribers]
        server_pid = stack.server.pid
        # Server CPU is the figure that other work on the machine does not distort.
        with CpuMeter({"server": lambda: [server_pid], "bench": lambda: [os.getpid()]}) as cpu:
            sent = time.perf_counter()
            # The emulator delivers the signed event and answers once the service has.
            answer = await http.post(
                f"http://127.0.0.1:{stack.emulator_port}/_emulator/checkout/sessions/"
                f"{session_id}/complete",
                json={},
            )
            answered = time.perf_counter()
            assert 200 <= answer.json()["webhook_status"] < 300, answer.text
            await asyncio.wait_for(asyncio.gather(*waiting), 300)
        assert all(s.status == "PAYMENT_CONFIRMED" for s in subscribers)
        await asyncio.gather(*(s.socket.close() for s in subscribers))
        return Result(
            subscribers=count,
            connect_seconds=connect_seconds,
            memory_per_1000_mib=(after - before) / count * 1000,
            webhook_ms=(answered - sent) * 1000,
            delays_ms=[((s.received_at or 0) - answered) * 1000 for s in subscribers],
            cpu=cpu.result,
        )


async def run(counts: list[int], events: str) -> None:
    problem = await postgres_problem()
    if problem:
        raise SystemExit(problem)
    database, smtp = BenchDatabase(), MailSinkProcess()
    await database.create()
    await smtp.start()
    try:
        for count in counts:
            print((await once(database, smtp.port, count, events)).line(), flush=True)
    finally:
        await smtp.stop()
        await database.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", default="1000,10000", help="comma-separated counts")
    parser.add_argument("--events", choices=("memory", "postgres", "redis"), default="postgres")
    args = parser.parse_args()
    counts = [int(c) for c in args.subscribers.split(",")]
    raise_open_files(max(counts))
    print(f"ordergraph subscriptions bench: one server process, EVENTS_URL={args.events}://")
    print(HEADER)
    asyncio.run(run(counts, args.events))


if __name__ == "__main__":
    main()
