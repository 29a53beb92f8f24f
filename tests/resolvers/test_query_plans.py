"""Query plans (resolvers/query_plans.py) answer exactly as graphql-core does.

Generated queries (hypothesis-graphql, over the fuzz tests' world of products, orders in
several states, a withdrawal, mail and webhook deliveries) are executed in the service's own
schema twice, with plans and without, as staff and as a shopper, and the two answers (data and
errors, as sent) must be equal. So must the success page's own query for every order, read by
its owner, by staff and by its access token. Which documents get a plan is checked on its own.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphql
import pytest
import strawberry
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis_graphql import queries
from starlette.requests import Request
from starlette.responses import Response
from strawberry.permission import BasePermission

from ordergraph.auth import issue_order_token
from ordergraph.models import Order
from ordergraph.resolvers import query_plans
from ordergraph.schema import build_schema
from ordergraph.web.graphql_app import GraphQLApp
from tests.conftest import Harness, outbox_settled
from tests.resolvers.test_fuzz import CUSTOM, ID_POOL, SDL, _world
from tests.utils.receivers import receiving

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

EXAMPLES = 300
PAGE = Path(__file__).parents[2] / "ordergraph" / "web" / "static" / "order-success.html"


def success_page_query() -> str:
    """The page's `ORDER_QUERY`, its template strings filled in as the page's script does."""
    script = PAGE.read_text()
    parts = dict(re.findall(r"const (\w+) = `(.*?)`;", script, re.S))
    query = parts["ORDER_QUERY"]
    for _ in range(3):
        query = re.sub(r"\$\{(\w+)\}", lambda m: parts[m.group(1)], query)
    return query


def plan_of(document: str) -> query_plans.ObjectPlan | None:
    operation = graphql.parse(document).definitions[0]
    assert isinstance(operation, graphql.OperationDefinitionNode)
    return query_plans.plan_operation(build_schema()._schema, operation)


def test_the_plain_shape_of_a_query_has_a_plan_and_the_rest_is_left_to_graphql_core() -> None:
    assert plan_of(success_page_query()) is not None
    assert plan_of("query($f: Int) { a: products(first: $f) { edges { node { __typename } } } }")
    for document in (
        "{ products { edges { node { ...F } } } } fragment F on Product { sku }",
        "{ products { edges { node { ... on Product { sku } } } } }",
        "query($s: Boolean!) { products { edges { node { sku @include(if: $s) } } } }",
        "{ products { edges { node { sku sku } } } }",  # one key twice: graphql-core merges
        "{ __schema { queryType { name } } }",
        "mutation { startGuestSession { token } }",
        "subscription { orderChanges { id } }",
    ):
        assert plan_of(document) is None, document


class _Deny(BasePermission):
    message = "denied"

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return False


@strawberry.type
class _Secret:
    public: str
    hidden: str = strawberry.field(permission_classes=[_Deny])


@strawberry.type
class _SecretQuery:
    @strawberry.field
    def secret(self) -> _Secret | None:
        return _Secret(public="p", hidden="TOP-SECRET")


async def test_a_plain_field_with_a_permission_is_read_through_its_resolver() -> None:
    """A plan reads a plain leaf attribute itself, but not past a field's permission classes
    (or other field extensions): Strawberry's resolver runs them around the read."""
    schema = strawberry.Schema(
        query=_SecretQuery, execution_context_class=query_plans.PlannedExecutor
    )
    document = "{ secret { public hidden } }"
    operation = graphql.parse(document).definitions[0]
    assert isinstance(operation, graphql.OperationDefinitionNode)
    plan = query_plans.plan_operation(schema._schema, operation)
    assert plan is not None and plan.fields[0].value is not None
    secret = plan.fields[0].value.object
    assert secret is not None
    assert [f.attribute for f in secret.fields] == ["public", None]

    result = await schema.execute(document)
    assert result.data == {"secret": None}
    assert [e.message for e in result.errors or []] == ["denied"]


@dataclass
class Twice:
    """Executes a document in the service's schema with plans and without, and compares."""

    app: Harness
    loop: asyncio.AbstractEventLoop
    tokens: dict[str, str]
    view: GraphQLApp
    compared: int = 0
    planned: int = 0
    answered: int = 0  # planned, and answered without errors: the plan's own answers
    shapes: set[str] = field(default_factory=set)

    async def execute(self, document: str, token: str | None, variables: Any) -> Any:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        scope = {"type": "http", "method": "POST", "headers": headers, "app": self.app.asgi}
        context = await self.view.get_context(Request(scope), Response())
        result = await self.view.schema.execute(
            document, variable_values=variables, context_value=context
        )
        return {
            "data": result.data,
            "errors": [e.formatted for e in result.errors or []],
        }

    async def both(self, document: str, token: str | None, variables: Any = None) -> Any:
        query_plans.ENABLED = False
        try:
            expected = await self.execute(document, token, variables)
        finally:
            query_plans.ENABLED = True
        return expected, await self.execute(document, token, variables)

    async def compare(self, document: str, token: str | None, variables: Any = None) -> None:
        expected, planned = await self.both(document, token, variables)
        if planned != expected:  # the world moved between the two (a mail went out)?
            expected, planned = await self.both(document, token, variables)
        assert planned == expected, f"\n{document}\n{variables}"
        self.compared += 1
        if plan_of(document) is not None:
            self.planned += 1
            self.answered += not planned["errors"]

    def compare_from_thread(self, document: str) -> None:
        role = "staff" if zlib.crc32(document.encode()) % 2 else "shopper"
        future = asyncio.run_coroutine_threadsafe(
            self.compare(document, self.tokens[role]), self.loop
        )
        future.result(timeout=60)


async def _settled_world(app: Harness) -> Twice:
    async with receiving() as receiver:
        await _world(app, receiver.url)
        await app.emulator.drain()
        await outbox_settled(timeout=30)
    # The same view serves /graphql over HTTP and WebSocket.
    view = next(v for r in app.asgi.routes if isinstance(v := getattr(r, "app", None), GraphQLApp))
    tokens = {"staff": app.token("fuzz-staff", staff=True), "shopper": app.token("fuzz-shopper")}
    return Twice(app, asyncio.get_running_loop(), tokens, view)


async def test_generated_queries_answer_alike_with_plans_and_without(app: Harness) -> None:
    twice = await _settled_world(app)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(document=queries(SDL, custom_scalars=CUSTOM))
    def run(document: str) -> None:
        twice.compare_from_thread(document)

    await asyncio.to_thread(run)
    print(f"compared {twice.compared}; planned {twice.planned}; answered by plan {twice.answered}")
    assert twice.compared >= EXAMPLES
    # The comparison reaches the plans, and their own (error-free) answers.
    assert twice.planned >= EXAMPLES // 4, twice.planned
    assert twice.answered >= EXAMPLES // 10, twice.answered


async def test_the_success_page_query_answers_alike_for_owner_staff_and_access_token(
    app: Harness,
) -> None:
    twice = await _settled_world(app)
    query = success_page_query()
    orders = await Order.filter(id__in=[i for i in ID_POOL if len(i) == 36]).all()
    assert len(orders) >= 3
    for order in orders:
        access = issue_order_token(app.settings.jwt_secret, str(order.id))
        owner = app.token(order.user_id)
        for token, variables in (
            (owner, {"id": str(order.id)}),
            (twice.tokens["staff"], {"id": str(order.id)}),
            (None, {"id": str(order.id), "access": access}),
            (app.token("stranger"), {"id": str(order.id)}),  # null: not theirs
            (app.token("stranger"), {"id": "x"}),
        ):
            await twice.compare(query, token, variables)
    assert twice.answered >= 5 * len(orders)
