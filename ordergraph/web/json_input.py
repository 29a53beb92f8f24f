"""JSON as the service takes it, from an HTTP body or a WebSocket message.

`json.loads` accepts more than a request may carry: nesting deep enough to exhaust Python's
recursion (a `RecursionError`, i.e. a 500), numbers too long to convert (a `ValueError`), and
strings holding lone UTF-16 surrogates (`"\\ud800"`), which are not Unicode text and fail later,
wherever the string is encoded (the database driver, a log line). Each of these is refused here,
with a reason, before anything reads the value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# A GraphQL request nests a few levels ({"variables": {"input": {...}}}); 32 is generous.
MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"
SURROGATE = "a string holds a lone UTF-16 surrogate, which is not Unicode text"


class UnacceptableJSON(json.JSONDecodeError):
    """Not JSON this service accepts; `reason` says why, in a few words fit for the client.
    A `JSONDecodeError`, so that Strawberry's views treat it as one."""

    def __init__(self, reason: str, document: str = "") -> None:
        super().__init__(reason, document, 0)
        self.reason = reason


@dataclass(frozen=True)
class Unreadable:
    """A WebSocket message that could not be taken as JSON, handed to the protocol handler
    in place of the message so that it answers as its protocol says (see ws_protocols)."""

    reason: str


def decode(data: str | bytes) -> object:
    """The JSON value of `data`, or `UnacceptableJSON` with the reason it is refused."""
    try:
        value = json.loads(data)
    except UnicodeDecodeError:
        raise UnacceptableJSON("not UTF-8") from None
    except RecursionError:
        raise UnacceptableJSON(TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        raise UnacceptableJSON(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # Python converts integers of at most 4,300 digits
        raise UnacceptableJSON("a number has too many digits") from None
    problem = _problem(value)
    if problem is not None:
        raise UnacceptableJSON(problem)
    return value


def _problem(value: object) -> str | None:
    """What makes a decoded value unacceptable, found without recursion."""
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return SURROGATE
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return TOO_DEEP
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None
