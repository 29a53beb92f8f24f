"""Stripe's form encoding and the checks every endpoint applies to its parameters.

The SDK sends form-encoded bodies with bracketed keys; this decodes them to
nested dicts and lists and offers the validations Stripe answers with
``invalid_request_error`` (wrong type, unknown parameter, out of range).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
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
    if value and all(k.isascii() and k.isdigit() for k in value):
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


def _bool_param(value: Any, param: str) -> bool:
    """The SDK sends booleans as ``true``/``false``; anything else is an ``Invalid boolean``."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise _invalid(f"Invalid boolean: {value}", param)


def _decimal_param(value: Any, param: str) -> Decimal:
    """A decimal such as ``percent_off=25.5``, kept exact."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _invalid(f"Invalid decimal: {value}", param)
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _invalid(f"Invalid decimal: {value}", param) from None
    if not number.is_finite():
        raise _invalid(f"Invalid decimal: {value}", param)
    return number


def _currency_param(value: Any, param: str) -> str:
    """A three-letter currency code, lower-cased as Stripe answers it."""
    if value in (None, ""):
        raise _invalid(f"Missing required param: {param}.", param, "parameter_missing")
    currency = _str_param(value, param).lower()
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise _invalid(f"Invalid currency: {currency}", param)
    return currency


def _enum_param(value: Any, param: str, allowed: tuple[str, ...]) -> str:
    """A string from a fixed set, refused with Stripe's ``must be one of`` message."""
    if value not in allowed:
        head, last = allowed[:-1], allowed[-1]
        choices = f"{', '.join(head)}{',' if len(head) > 1 else ''} or {last}" if head else last
        raise _invalid(
            f"Invalid {param.rpartition('[')[2].rstrip(']')}: must be one of {choices}",
            param,
            "parameter_invalid_string" if isinstance(value, str) else None,
        )
    return str(value)


def _metadata_param(value: Any, param: str = "metadata") -> dict[str, str]:
    """``metadata`` on create: a hash of strings (empty values dropped, as Stripe does)."""
    raw = _dict_param(value, param)
    out: dict[str, str] = {}
    for key, item in raw.items():
        if isinstance(item, (dict, list)):
            raise _invalid(f"Invalid string: {param}[{key}] must be a string", f"{param}[{key}]")
        if item != "":
            out[str(key)] = str(item)
    return out


def _metadata_update(current: dict[str, str], value: Any, param: str = "metadata") -> JsonDict:
    """``metadata`` on update: keys are merged, an empty value unsets a key, ``metadata=`` all."""
    if value == "":
        return {}
    raw = _dict_param(value, param)
    merged = dict(current)
    for key, item in raw.items():
        if isinstance(item, (dict, list)):
            raise _invalid(f"Invalid string: {param}[{key}] must be a string", f"{param}[{key}]")
        if item == "":
            merged.pop(str(key), None)
        else:
            merged[str(key)] = str(item)
    return merged


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
