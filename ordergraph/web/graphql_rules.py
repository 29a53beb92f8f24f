"""Two rules of the GraphQL spec and of this service that Strawberry leaves to us.

`require_operation_name`: a document with several operations names the one to run
(GraphQL spec, GetOperation: "Must provide operation name if query contains multiple
operations"). Strawberry, given no `operationName`, runs the first operation of the document.

`ClientErrors`: what a client sees of errors. One not raised on purpose is masked (no SQL or
internals reach a client); and with introspection off, error messages do not suggest names
("Cannot query field 'refundOrdr' on type 'Mutation'. Did you mean 'refundOrder'?"): such
hints would map the schema for anyone who misspells on purpose. graphql-core adds them in
validation (unknown fields, arguments, types, enum values, input fields) and when it coerces
variables; they are cut from every error, over HTTP and WebSocket alike.
"""

from __future__ import annotations

import re

from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, ValidationRule
from strawberry.extensions import MaskErrors
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionContext

INTERNAL_ERROR = "Internal error"
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


def is_unexpected(error: GraphQLError) -> bool:
    """An error that is not ours on purpose: masked, so that no SQL or internals reach a
    client, and logged (`schema.Schema.process_errors`)."""
    if error.original_error is None:
        return False  # parse and validation errors speak of the query, not of us
    if isinstance(error.original_error, GraphQLError):
        return False
    # Strawberry's own refusals of a request (an unknown operation name, an operation type the
    # transport does not run, e.g. a query over graphql-ws) say what was wrong with it.
    return not isinstance(
        error.original_error, CannotGetOperationTypeError | InvalidOperationTypeError
    )


def suggests(error: GraphQLError) -> bool:
    return "Did you mean" in error.message


def without_suggestions(message: str) -> str:
    return _SUGGESTION.sub("", message)


class ClientErrors(MaskErrors):
    """Reuses MaskErrors' walk over every result (plain, streamed, subscription): unexpected
    errors become "Internal error"; with `hide_suggestions`, the others lose their name
    suggestions and keep the rest. One extension for both: each MaskErrors walk costs a
    request tens of microseconds (a runtime-checked Protocol per result)."""

    def __init__(self, *, hide_suggestions: bool) -> None:
        self.hide_suggestions = hide_suggestions
        super().__init__(should_mask_error=self.rewrites, error_message=INTERNAL_ERROR)

    def rewrites(self, error: GraphQLError) -> bool:
        return is_unexpected(error) or (self.hide_suggestions and suggests(error))

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        if is_unexpected(error):
            return super().anonymise_error(error)
        return GraphQLError(
            message=without_suggestions(error.message),
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=error.original_error,
            extensions=error.extensions,
        )
