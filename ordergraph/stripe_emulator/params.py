"""Stripe's form encoding and the checks every endpoint applies to its parameters.

The SDK sends form-encoded bodies with bracketed keys; this decodes them to
nested dicts and lists and offers the validations Stripe answers with
``invalid_request_error`` (wrong type, unknown parameter, out of range).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ordergraph.stripe_emulator.errors import _invalid
from ordergraph.stripe_emulator.types import JsonDict

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def decode_form(pairs: Iterable[tuple[str, str]]) -> JsonDict:
    """Decode Stripe's bracketed form keys (``line_items[0][price_data][currency]``) to nesting.

    Dicts whose keys are all indices become lists, as the SDK encodes lists with
    explicit indices (``expand[0]``); ``key[]`` appends.
    """
    root: JsonDict = {}
    for raw_key, value in pairs:
        match = _KEY_RE.match(raw_key)
        if match is None:
            raise _invalid(f"Invalid parameter name: {raw_key}", raw_key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node: JsonDict = root
        for depth, part in enumerate(parts):
            key = str(len(node)) if part == "" else part
            last = depth == len(parts) - 1
            if last:
                if isinstance(node.get(key), dict):
                    raise _invalid(f"Invalid hash: {raw_key}", raw_key)
                node[key] = value
            else:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise _invalid(f"Invalid array or hash: {raw_key}", raw_key)
                node = child
    return _listify(root)


def _listify(node: JsonDict) -> JsonDict:
    out: JsonDict = {}
    for key, value in node.items():
        out[key] = _listify_value(value)
    return out


def _listify_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if value and all(k.isdigit() for k in value):
        return [_listify_value(value[k]) for k in sorted(value, key=int)]
    return _listify(value)


def _int_param(value: Any, param: str, *, minimum: int | None = None) -> int:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise _invalid(f"Invalid integer: {value}", param)
    try:
        number = int(value)
    except ValueError:
        raise _invalid(f"Invalid integer: {value}", param) from None
    if minimum is not None and number < minimum:
        raise _invalid(
            f"This value must be greater than or equal to {minimum}.",
            param,
            "parameter_invalid_integer",
        )
    return number


def _str_param(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {value!r}", param)
    return value


def _dict_param(value: Any, param: str) -> JsonDict:
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"Invalid object: {param} must be a hash", param)
    return value


def _check_unknown(params: JsonDict, allowed: frozenset[str], prefix: str = "") -> None:
    for key in params:
        if key not in allowed:
            name = f"{prefix}[{key}]" if prefix else key
            raise _invalid(f"Received unknown parameter: {name}", name, "parameter_unknown")
