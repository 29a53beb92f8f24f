"""Query plans: a query's selection walked once per document, not once per request.

graphql-core completes every field of every request the same general way: it collects the
selection (fragments, directives, merged fields), looks the field up, builds its arguments and
checks the value's type at each step, whatever the document. For the success page's `order`
(about 70 fields) that bookkeeping cost more CPU than reading the order. A plan does the
document-dependent part once, when the document is first executed: for each field, its
definition, resolver, static arguments and how to complete its value. Each request then calls
the very same resolvers (Strawberry's, with graphql-core's resolve info) and coerces leaves with
the very same scalars and enums; only the walk is precomputed.

Plans cover the plain shape of a query: fields and aliases, arguments and variables, lists,
objects and leaves, `__typename`. A document with fragments, directives, a field asked twice
under one name, introspection or an interface or union is executed by graphql-core as before.

Anything but a clean answer (an error raised by a resolver, a null where the schema allows
none, a value of the wrong shape) makes the plan step aside: the operation is executed again
by graphql-core from the start, which answers it with its errors, paths and partial data
exactly as before. A query changes nothing, so running its resolvers again is safe; only the
answers without errors, the common case, are the plan's own. `tests/resolvers/
test_query_plans.py` checks generated queries answer alike both ways.
"""

from __future__ import annotations

from asyncio import iscoroutine
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    GraphQLField,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
)
from graphql.execution.values import get_argument_values
from graphql.pyutils import Path, Undefined, gather_with_cancel, is_iterable
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from ordergraph.bounded_cache import BoundedCache
from ordergraph.resolvers.subscriptions import SharedEventExecutor

# A switch for the tests that compare both ways of executing.
ENABLED = True

# Plans by schema and operation node (their ids, with both kept in the entry so that neither id
# can be reused while it lives), for as many documents as the parser cache keeps. The parser
# cache is Strawberry's, shared by every schema of the process: a plan holds one schema's
# fields and resolvers.
_Plan = tuple[GraphQLSchema, OperationDefinitionNode, "ObjectPlan | None"]
_PLANS = BoundedCache[tuple[int, int], _Plan](512)

STRAWBERRY_FIELD = GraphQLCoreConverter.DEFINITION_BACKREF


class Unplanned(Exception):
    """What the plan leaves to graphql-core: an error, or a value it would report as one."""


@dataclass(frozen=True, slots=True)
class ValuePlan:
    """How to complete a value of one output type (non-null and list wrappers unrolled)."""

    non_null: bool
    item: ValuePlan | None = None  # a list's items
    leaf: GraphQLLeafType | None = None
    object: ObjectPlan | None = None


@dataclass(frozen=True, slots=True)
class FieldPlan:
    key: str  # the response key: the alias, or the field's name
    nodes: list[FieldNode]  # the field's one node, as resolve info hands it on
    definition: GraphQLField | None  # None for __typename
    value: ValuePlan | None
    static_args: dict[str, Any] | None  # None: computed per request (arguments given)
    # Strawberry's resolver of a field without a resolver of its own reads the attribute and
    # ignores the resolve info (`_is_default`): none is built for it.
    basic: bool = False
    # A basic leaf read with `getattr` (Strawberry's default resolver): the plan reads the
    # attribute itself, and needs no path for it. Most of a query's fields are such.
    attribute: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectPlan:
    type: GraphQLObjectType
    fields: tuple[FieldPlan, ...]


def plan_operation(schema: GraphQLSchema, operation: OperationDefinitionNode) -> ObjectPlan | None:
    """The plan of a query, or None when graphql-core must execute it."""
    if operation.operation is not OperationType.QUERY or operation.directives:
        return None
    root = schema.query_type
    return None if root is None else _plan_object(root, operation.selection_set)


def _plan_object(parent: GraphQLObjectType, selection_set: SelectionSetNode) -> ObjectPlan | None:
    fields: list[FieldPlan] = []
    keys: set[str] = set()
    for node in selection_set.selections:
        if not isinstance(node, FieldNode) or node.directives:
            return None
        key = (node.alias or node.name).value
        if key in keys:  # merged by graphql-core
            return None
        keys.add(key)
        name = node.name.value
        if name == "__typename":
            fields.append(FieldPlan(key, [node], None, None, {}))
            continue
        definition = parent.fields.get(name)  # introspection fields are not among them
        if definition is None:
            return None
        value = _plan_value(definition.type, node.selection_set)
        if value is None:
            return None
        static: dict[str, Any] | None = {} if not definition.args and not node.arguments else None
        basic = getattr(definition.resolve, "_is_default", False) is True
        fields.append(
            FieldPlan(
                key, [node], definition, value, static, basic, _attribute(definition, value, basic)
            )
        )
    return ObjectPlan(parent, tuple(fields))


def _attribute(definition: GraphQLField, value: ValuePlan, basic: bool) -> str | None:
    """The attribute a basic leaf field reads, when Strawberry reads it with `getattr`. Not for
    a field with permission classes or other field extensions: `basic` holds for those too (no
    resolver of its own), but their resolver runs the extensions around the read."""
    strawberry_field = (definition.extensions or {}).get(STRAWBERRY_FIELD)
    if (
        not basic
        or value.leaf is None
        or not isinstance(strawberry_field, StrawberryField)
        or not strawberry_field.is_basic_field
        or strawberry_field.default_resolver is not getattr
    ):
        return None
    return strawberry_field.python_name


def _plan_value(
    type_: GraphQLOutputType, selection_set: SelectionSetNode | None
) -> ValuePlan | None:
    non_null = isinstance(type_, GraphQLNonNull)
    if isinstance(type_, GraphQLNonNull):
        type_ = type_.of_type
    if isinstance(type_, GraphQLList):
        item = _plan_value(type_.of_type, selection_set)
        return None if item is None else ValuePlan(non_null, item=item)
    if isinstance(type_, GraphQLObjectType):
        if selection_set is None or type_.is_type_of is not None:
            return None
        obj = _plan_object(type_, selection_set)
        return None if obj is None else ValuePlan(non_null, object=obj)
    if isinstance(type_, GraphQLLeafType):
        return ValuePlan(non_null, leaf=type_)
    return None  # an interface or a union


class PlannedExecutor(SharedEventExecutor):
    """graphql-core's executor, which follows a plan when the query has one (`plan_operation`)."""

    # The coroutines the plan made, so that those it never awaited can be closed when it
    # steps aside (else each warns that it was never awaited).
    _made: list[Any]
    _hooked: bool  # extensions' `resolve` hooks wrap every resolver

    def execute_operation(self, serially: bool | None = None) -> Any:
        plan = self._plan()
        if plan is None:
            return super().execute_operation(serially)
        self._made = []
        manager = self.middleware_manager
        self._hooked = manager is not None and bool(manager.middlewares)
        try:
            data = self._object(plan, self.root_value, None)
        except Exception:  # graphql-core answers it, with its errors
            return self._step_aside(serially)
        if self.is_awaitable(data):
            return self._settle(data, serially)
        return self.finish(self.build_response(data))

    def _plan(self) -> ObjectPlan | None:
        operation = self.operation
        if (
            not ENABLED
            or operation.operation is not OperationType.QUERY
            or self.abort_signal is not None
        ):
            return None
        schema = self.schema
        entry = _PLANS.get(
            (id(schema), id(operation)),
            lambda: (schema, operation, plan_operation(schema, operation)),
        )
        return entry[2]

    async def _settle(self, data: Awaitable[dict[str, Any]], serially: bool | None) -> Any:
        try:
            completed = await data
        except Exception:  # graphql-core answers it, with its errors
            result = self._step_aside(serially)
            return await result if self.is_awaitable(result) else result
        return self.finish(self.build_response(completed))

    def _step_aside(self, serially: bool | None) -> Any:
        for made in self._made:
            made.close()  # a no-op for those that ran
        self._made = []
        return super().execute_operation(serially)

    def _made_here(self, awaitable: Any) -> Any:
        if iscoroutine(awaitable):
            self._made.append(awaitable)
        return awaitable

    def _object(self, plan: ObjectPlan, source: Any, path: Path | None) -> Any:
        """The object's answer, or an awaitable of it when a field's resolver is async."""
        data: dict[str, Any] = {}
        waiting: list[tuple[str, Awaitable[Any]]] = []
        plain = not self._hooked
        for field in plan.fields:
            if field.attribute is not None and plain:
                value = self._leaf(field.value, getattr(source, field.attribute))  # type: ignore[arg-type]
            else:
                value = self._field(plan.type, field, source, Path(path, field.key, plan.type.name))
            if self.is_awaitable(value):
                waiting.append((field.key, value))
            data[field.key] = value
        if not waiting:
            return data
        return self._made_here(self._gather_fields(data, waiting))

    @staticmethod
    async def _gather_fields(
        data: dict[str, Any], waiting: list[tuple[str, Awaitable[Any]]]
    ) -> dict[str, Any]:
        # Together, as graphql-core runs them, so that DataLoaders batch across them.
        values = await gather_with_cancel(*(awaitable for _, awaitable in waiting))
        for (key, _), value in zip(waiting, values, strict=True):
            data[key] = value
        return data

    def _field(self, parent: GraphQLObjectType, field: FieldPlan, source: Any, path: Path) -> Any:
        definition, value_plan = field.definition, field.value
        if definition is None or value_plan is None:
            return parent.name  # __typename
        if field.basic and not self._hooked:
            return self._complete(value_plan, definition.resolve(source, None), path)  # type: ignore[misc]
        info = self.build_resolve_info(definition, field.nodes, parent, path)
        args = field.static_args
        if args is None:
            args = get_argument_values(
                definition, field.nodes[0], self.variable_values, None, self.hide_suggestions
            )
        resolve = definition.resolve or self.field_resolver
        if self._hooked:  # as graphql-core does
            resolve = self.middleware_manager.get_field_resolver(resolve)  # type: ignore[union-attr]
        result = resolve(source, info, **args)
        if self.is_awaitable(result):
            self._made_here(result)
            return self._made_here(self._complete_later(value_plan, result, path))
        return self._complete(value_plan, result, path)

    async def _complete_later(self, plan: ValuePlan, result: Awaitable[Any], path: Path) -> Any:
        completed = self._complete(plan, await result, path)
        return await completed if self.is_awaitable(completed) else completed

    @staticmethod
    def _null(plan: ValuePlan, value: Any) -> bool:
        """Whether `value` is a null the schema allows (Unplanned for one it does not, or for
        an error returned as the value)."""
        if value is None or value is Undefined:
            if plan.non_null:
                raise Unplanned
            return True
        if isinstance(value, Exception):
            raise Unplanned
        return False

    def _leaf(self, plan: ValuePlan, value: Any) -> Any:
        if self._null(plan, value):
            return None
        assert plan.leaf is not None
        coerced = plan.leaf.coerce_output_value(value)
        if coerced is None or coerced is Undefined:
            raise Unplanned
        return coerced

    def _complete(self, plan: ValuePlan, value: Any, path: Path) -> Any:
        if plan.leaf is not None:
            return self._leaf(plan, value)
        if self._null(plan, value):
            return None
        if plan.object is not None:
            return self._object(plan.object, value, path)
        assert plan.item is not None
        if not is_iterable(value):
            raise Unplanned
        items = [self._complete(plan.item, v, path.add_key(i)) for i, v in enumerate(value)]
        if any(self.is_awaitable(item) for item in items):
            return self._made_here(self._gather_items(items))
        return items

    async def _gather_items(self, items: list[Any]) -> list[Any]:
        pending = [i for i, item in enumerate(items) if self.is_awaitable(item)]
        values = await gather_with_cancel(*(items[i] for i in pending))
        for i, value in zip(pending, values, strict=True):
            items[i] = value
        return items
