"""Two rules of the GraphQL spec and of this service that Strawberry leaves to us.

`require_operation_name`: a document with several operations names the one to run
(GraphQL spec, GetOperation: "Must provide operation name if query contains multiple
operations"). Strawberry, given no `operationName`, runs the first operation of the document.

`HideSuggestions`: with introspection off, error messages do not suggest names
("Cannot query field 'refundOrdr' on type 'Mutation'. Did you mean 'refundOrder'?"): such
hints would map the schema for anyone who misspells on purpose. graphql-core adds them in
validation (unknown fields, arguments, types, enum values, input fields) and when it coerces
variables; they are cut from every error, over HTTP and WebSocket alike.
"""

from __future__ import annotations

import re

from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, ValidationRule
from strawberry.extensions import MaskErrors
from strawberry.types import ExecutionContext

MULTIPLE_OPERATIONS = "Must provide operation name if query contains multiple operations."

# graphql-core's `did_you_mean`: " Did you mean 'a'?", " Did you mean 'a' or 'b'?",
# " Did you mean the enum value 'A', 'B', or 'C'?" (names never hold a "?").
_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


class SingleOperationRule(ValidationRule):
    """The document holds one operation (checked only when no operation is named)."""

    def enter_document(self, node: DocumentNode, *_args: object) -> None:
        operations = [d for d in node.definitions if isinstance(d, OperationDefinitionNode)]
        if len(operations) > 1:
            self.report_error(GraphQLError(MULTIPLE_OPERATIONS, operations))


def require_operation_name(execution: ExecutionContext) -> None:
    """Adds `SingleOperationRule` to the validation of a request that names no operation. A
    validation error, not an exception: it is answered the same way over HTTP and WebSocket.
    (One fixed rule class, so that the validation cache still finds its entries. Before each
    operation: `schema.OperationRules`.)"""
    if execution._provided_operation_name is None:
        execution.validation_rules = (*execution.validation_rules, SingleOperationRule)


def suggests(error: GraphQLError) -> bool:
    return "Did you mean" in error.message


def without_suggestions(message: str) -> str:
    return _SUGGESTION.sub("", message)


class HideSuggestions(MaskErrors):
    """Reuses MaskErrors' walk over every result (plain, streamed, subscription), rewriting
    only the messages that suggest names, and keeping the rest of each error."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=suggests)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        return GraphQLError(
            message=without_suggestions(error.message),
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=error.original_error,
            extensions=error.extensions,
        )
