"""Logging for every process of the service: plain text, or one JSON object a line.

With `LOG_FORMAT=json` each record is one line carrying, where they apply, the request's id
(`request_id`, from the `X-Request-ID` header or made up), the order it concerns (`order_id`)
and the Stripe event being applied (`stripe_event_id`), so that one request, one order or one
delivery can be followed across the service's lines, workers included. The ids live in context
variables: set once where they become known, they reach every line logged by that task.
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("ordergraph_request_id", default=None)
order_id: ContextVar[str | None] = ContextVar("ordergraph_order_id", default=None)
stripe_event_id: ContextVar[str | None] = ContextVar("ordergraph_stripe_event_id", default=None)

_CONTEXT = (
    ("request_id", request_id),
    ("order_id", order_id),
    ("stripe_event_id", stripe_event_id),
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def bind_order(value: str) -> None:
    """For a request's task: the order stays its subject until the request ends."""
    order_id.set(value)


@contextmanager
def about_order(value: str | None) -> Iterator[None]:
    """For a long-lived task working through orders one by one (the sweeper, the mail
    sender): the order is the subject of its lines only for the block."""
    token = order_id.set(value)
    try:
        yield
    finally:
        order_id.reset(token)


def bind_stripe_event(value: str) -> None:
    stripe_event_id.set(value)


class ContextFilter(logging.Filter):
    """Puts the ids known to the logging task on its records (only those that are set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in _CONTEXT:
            value = variable.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        # The ids above are extra attributes of a record: the JSON formatter adds them.
        # `process` tells the workers of `serve --workers N` apart.
        return JsonFormatter(
            "%(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            # uvicorn repeats its message with terminal colours in `color_message`.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )
    return logging.Formatter(TEXT_FORMAT)


def logging_config(log_format: str) -> dict[str, Any]:
    """A `dictConfig` for this process; uvicorn applies the same one in each of its workers.

    uvicorn's own loggers propagate to the root handler, so that its lines (the access log
    included) come out in the same format as ours.
    """
    quiet = {"level": "WARNING"}
    propagate = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "ordergraph.logs.ContextFilter"}},
        "formatters": {
            "default": {"()": "ordergraph.logs.make_formatter", "log_format": log_format}
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": propagate,
            "uvicorn.error": propagate,
            "uvicorn.access": propagate,
            # One line per Stripe call and per HTTP request is noise at INFO, and costs on the
            # hot path.
            "stripe": quiet,
            "httpx": quiet,
        },
    }


def configure_logging(log_format: str) -> None:
    logging.config.dictConfig(logging_config(log_format))
