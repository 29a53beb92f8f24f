"""Type aliases shared by the emulator's modules.

They live apart so that the lowest modules (errors, params) can use them without
importing the state or each other.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

JsonDict = dict[str, Any]

# Work to run in the background once an API answer is sent (webhook deliveries).
After = Callable[[], Coroutine[Any, Any, Any]]
