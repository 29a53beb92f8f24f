"""The two kinds of failure: Stripe API errors and misuse of the emulator's own controls.

``StripeApiError`` is answered in Stripe's error envelope and carries whether an
idempotent request keeps it for replay; ``EmulatorError`` is for the test
controls, which are not part of Stripe's API.
"""

from __future__ import annotations

from ordergraph.stripe_emulator.types import JsonDict


class StripeApiError(Exception):
    """An error answered in Stripe's envelope: ``{"error": {"type", "message", ...}}``.

    ``stored`` says whether an idempotent request keeps this answer for replay
    (Stripe keeps results once an endpoint began executing, not validation failures).
    """

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        stored: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.stored = stored
        self.headers = headers or {}

    def body(self) -> JsonDict:
        error: JsonDict = {"message": self.message, "type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


class EmulatorError(ValueError):
    """Misuse of the emulator's own controls (unknown id, wrong state); ``status`` for HTTP."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    """A parameter validation error: 400, not kept for idempotent replay."""
    return StripeApiError(
        400, "invalid_request_error", message, code=code, param=param, stored=False
    )


def _missing(param: str) -> StripeApiError:
    return _invalid(f"Missing required param: {param}.", param, "parameter_missing")
