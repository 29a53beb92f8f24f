"""`Subscription.orderStatusChanged`: the order as it is now, then after every committed change;
`Subscription.orderChanges` (staff): every order of the shop after each change, new ones too.

Events are hints (order id, version). On each hint the subscriber re-reads the order, so what
it sends is always a committed state, whatever the transport lost, repeated or reordered; and
it sends only versions newer than the last it sent (for staff: or with more notes; see
`staff_feed`). All subscribers of an order in this process share one read per change
(`OrderReads`), each read with DataLoaders of its own: a WebSocket's context lives as long as
the connection, so loaders kept there would serve the order's history as it was when the
socket opened.

Staff notes are announced as note events, which reach staff only: a shopper's subscription is
not woken by a note, so it sends nothing (domain/notes.py says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import strawberry
from graphql import ExecutionResult, GraphQLError
from graphql import OperationType as OperationKind
from starlette.websockets import WebSocket
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.graphql import OperationType
from tortoise.transactions import in_transaction

from ordergraph import events, logs, metrics
from ordergraph.db import is_postgres
from ordergraph.domain import order_read
from ordergraph.domain.errors import ErrorCode
from ordergraph.models import Order as OrderModel
from ordergraph.resolvers import orders
from ordergraph.resolvers.base import require_staff
from ordergraph.resolvers.context import Context, Info
from ordergraph.resolvers.loaders import Loaders
from ordergraph.resolvers.staff_feed import (
    NOTHING_SENT,
    Mark,
    SentMarks,
    newer,
    with_missed,
    worth_reading,
)
from ordergraph.resolvers.types import Order

# WebSocket close code for a subscriber dropped for reading too slowly: "try again later".
SLOW_CLIENT_CLOSE_CODE = 1013


@dataclass(frozen=True)
class Snapshot:
    order: OrderModel
    loaders: Loaders
    # Answers already computed from this snapshot, by question (see SharedEventExecutor).
    answers: dict[tuple[Any, ...], Any] = field(default_factory=dict)


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Subscribers asking the same question about the same snapshot share one answer.

    graphql-core runs a subscription's selection once per subscriber and event; for 10,000
    people following one order that is 10,000 identical executions of the same fields. Here the
    first subscriber to reach a snapshot computes the result and the others await it. Only
    identical documents (one parse, thanks to the parser cache) with identical variables share,
    and an order reads the same to everyone allowed to follow it.
    """

    def execute_operation(self, serially: bool | None = None) -> Any:
        answers = getattr(self.root_value, "answers", None)
        if answers is None or self.operation.operation is not OperationKind.SUBSCRIPTION:
            return super().execute_operation(serially)
        # Who asks matters for one field only (`accessToken`, for the owner and staff): the
        # caller's identity joins the key, so that answers are shared only among equals.
        identity = getattr(self.context_value, "identity", None)
        key = (
            id(self.operation),
            repr(sorted(self.variable_values.coerced.items())),
            None if identity is None else "staff" if identity.is_staff else identity.user_id,
        )
        answer = answers.get(key)
        if answer is None:
            result = super().execute_operation(serially)
            if not self.is_awaitable(result):
                answers[key] = result
                return result
            answer = answers[key] = asyncio.ensure_future(result)
        if isinstance(answer, asyncio.Future):
            return asyncio.shield(answer)
        return answer

    def build_per_event_executor(self, payload: Any) -> Any:
        """Each event's executor memoizes its collected fields and plans for itself.

        graphql-core's per-event executors are shallow copies that share these caches with the
        subscription's executor, which lives as long as the subscription: an idle subscriber
        would hold its first event's collected fields (about 5 KB for the success page's
        selection). The memo is for the lists within one execution, and with shared answers
        only one subscriber per snapshot executes the selection at all.
        """
        executor = super().build_per_event_executor(payload)
        for name in _EVENT_MEMOS:
            if name in vars(executor):
                setattr(executor, name, type(getattr(executor, name))())
        return executor


# The executor's memos that a per-event executor would otherwise share with its subscription's.
_EVENT_MEMOS = (
    "_relevant_sub_fields",
    "_stream_usages",
    "_initial_execution_plans",
    "_deferred_execution_plans",
)


class OrderReads:
    """One read of an order shared by every subscriber of it that is waiting for one.

    A subscriber that learnt of a change at time `since` may use any read that started at or
    after `since`: it sees that change. So when a hint reaches 10,000 subscribers of one order,
    the first starts a read and the other 9,999 wait for it instead of asking the database.
    """

    def __init__(self) -> None:
        self._pending: dict[str, tuple[float, asyncio.Task[Snapshot | None]]] = {}

    async def read(self, order_id: str, since: float) -> Snapshot | None:
        entry = self._pending.get(order_id)
        if entry is None or entry[0] < since:
            entry = (time.monotonic(), asyncio.create_task(self._read(order_id)))
            self._pending[order_id] = entry
            entry[1].add_done_callback(lambda _: self._forget(order_id, entry))
        # Shielded: a subscriber that leaves does not cancel the read for the others.
        return await asyncio.shield(entry[1])

    def _forget(self, order_id: str, entry: tuple[float, asyncio.Task[Snapshot | None]]) -> None:
        if self._pending.get(order_id) is entry:
            del self._pending[order_id]
        if not entry[1].cancelled():
            entry[1].exception()  # retrieved here, so a read no one awaits is not reported

    @staticmethod
    async def _read(order_id: str) -> Snapshot | None:
        """The order, its lines, its history and its returns as of one moment, so that a
        message never pairs a status with a history (or a return) that has already moved on."""
        # Shared by many subscribers: the one whose request started it is not its subject.
        logs.request_id.set(None)
        loaders = Loaders()
        async with in_transaction() as connection:
            if is_postgres(connection):
                await connection.execute_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            read = await order_read.read_order(order_id)
            if read is None:
                return None
            loaders.order_items.prime(order_id, read.lines)
            loaders.status_changes.prime(order_id, read.history)
            # Returns too: a return's step and the refund that follows it commit apart.
            await loaders.order_returns.load(order_id)
        return Snapshot(read.order, loaders)

    def __len__(self) -> int:
        return len(self._pending)


reads = OrderReads()


async def order_status_changed(
    info: Info, order_id: strawberry.ID, access_token: str | None = None
) -> AsyncIterator[Order]:
    """Checked before the stream starts, so that refusal is the operation's error: only the
    owner, staff or the holder of the order's access token may follow an order (the rule is
    `orders.order`'s), and anyone else is told it does not exist."""
    context: Context = info.context
    if not isinstance(context.request, WebSocket):
        raise _websocket_only()
    order = await orders.order(info, order_id, access_token)
    if order is None:
        raise GraphQLError("No such order", extensions={"code": ErrorCode.NOT_FOUND.value})
    staff = context.identity is not None and context.identity.is_staff
    return follow(context, context.request, str(order.id), staff=staff)


async def order_changes(info: Info) -> AsyncIterator[Order]:
    """Staff only, refused before the stream starts as orderStatusChanged refuses (no token:
    UNAUTHENTICATED; not staff: FORBIDDEN). First the orders changed in the moments before it
    started (see `follow_shop`); then every order of the shop after each committed change: a
    new order when its checkout commits, then its payment, fulfilment, refunds, returns and
    notes."""
    context: Context = info.context
    if not isinstance(context.request, WebSocket):
        raise _websocket_only()
    await require_staff(info)
    return follow_shop(context, context.request)


async def follow(
    context: Context, websocket: WebSocket, order_id: str, *, staff: bool = False
) -> AsyncIterator[Order]:
    transport = events.current_transport()
    metrics.ACTIVE_SUBSCRIPTIONS.inc()
    try:
        async with transport.subscribe(order_id, lambda: _drop(websocket), notes=staff) as hints:
            # Subscribed before the first read: a change committed after it arrives as a hint.
            since = time.monotonic()
            last_sent = NOTHING_SENT
            while True:
                snapshot = await reads.read(order_id, since)
                if snapshot is None:
                    return  # the order is gone
                mark = await _mark(snapshot, staff)
                if newer(mark, last_sent):
                    last_sent = mark
                    message = _message(context, snapshot)
                    yield message
                    # graphql-core holds the message until the next one: sent, it needs
                    # neither the snapshot's answers nor the row.
                    message.answers = message.row = None
                # Not held while waiting: an idle subscriber keeps no order, rows or answers.
                snapshot = None
                context.loaders = None
                hint = await _news(hints, last_sent)
                if hint is None:
                    return  # dropped for reading too slowly: its socket is being closed
                since = hint.received
    finally:
        metrics.ACTIVE_SUBSCRIPTIONS.dec()


async def follow_shop(context: Context, websocket: WebSocket) -> AsyncIterator[Order]:
    """Every order that changes, each read once per burst of hints (they come coalesced) and
    sent when newer than what this subscriber last sent of it.

    It starts with the orders changed in the moments before it listened, as after a transport
    gap (`staff_feed.missed_orders`): a client reads its first page when its socket is
    acknowledged and subscribes at the same moment, and a change committed between that read
    and this subscription's start would otherwise show only at the order's next change."""
    transport = events.current_transport()
    metrics.ACTIVE_SUBSCRIPTIONS.inc()
    try:
        async with transport.subscribe_shop(lambda: _drop(websocket)) as feed:
            feed.missed(time.time())
            sent = SentMarks()
            async for news in feed:
                for order_id, hint in (await with_missed(news)).items():
                    if not worth_reading(hint.event, sent.get(order_id)):
                        continue
                    snapshot = await reads.read(order_id, hint.received)
                    if snapshot is not None and sent.record(
                        order_id, await _mark(snapshot, staff=True)
                    ):
                        yield _message(context, snapshot)
                snapshot = None
                context.loaders = None
    finally:
        metrics.ACTIVE_SUBSCRIPTIONS.dec()


async def _mark(snapshot: Snapshot, staff: bool) -> Mark:
    """What the message of `snapshot` shows: its version and, to staff, how many notes (read
    through the snapshot's loader, so the message's `notes` are these very ones)."""
    if not staff:
        return (snapshot.order.version, 0)
    notes = await snapshot.loaders.order_notes.load(str(snapshot.order.id))
    return (snapshot.order.version, len(notes))


def _message(context: Context, snapshot: Snapshot) -> Order:
    context.loaders = snapshot.loaders
    message = Order.from_model(snapshot.order)
    message.answers = snapshot.answers
    return message


async def _news(hints: events.Subscriber, last_sent: Mark) -> events.Hint | None:
    """The next hint that may show something newer than the last message, or None once there
    are none."""
    async for hint in hints:
        if worth_reading(hint.event, last_sent):
            return hint
    return None


def _websocket_only() -> GraphQLError:
    return GraphQLError(
        "Subscriptions are served over WebSocket at /graphql (graphql-transport-ws or graphql-ws)",
        extensions={"code": ErrorCode.INVALID_INPUT.value},
    )


class WebSocketOnly(SchemaExtension):
    """A subscription POSTed as a plain request gets a clear error. (GraphQL would otherwise
    run it as a query: `null` for a non-null field. Streamed over HTTP, the resolver's own
    check answers.)"""

    def on_execute(self) -> Iterator[None]:
        execution = self.execution_context
        if execution.operation_type is OperationType.SUBSCRIPTION and not isinstance(
            execution.context.request, WebSocket
        ):
            execution.result = ExecutionResult(data=None, errors=[_websocket_only()])
        yield


_closing: set[asyncio.Task[None]] = set()


def _drop(websocket: WebSocket) -> None:
    """A subscriber that cannot keep up: close its socket rather than queue for it."""
    task = asyncio.get_running_loop().create_task(_close(websocket))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _close(websocket: WebSocket) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code=SLOW_CLIENT_CLOSE_CODE, reason="subscriber too slow")
