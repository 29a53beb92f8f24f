"""Events API: ``GET /v1/events/{id}`` returns an event sent (or built) earlier.

Events are made by ``delivery.build_event``; this only serves them back, as
Stripe does for a receiver that re-fetches an event instead of trusting the
delivered body.
"""

from __future__ import annotations

import copy

from ordergraph.stripe_emulator.state import ApiRoute, EmulatorState, _Call, _Result


async def retrieve_event(state: EmulatorState, call: _Call, event_id: str) -> _Result:
    """``GET /v1/events/{id}``."""
    by_id = {e["id"]: e for e in state.events}
    return _Result(200, copy.deepcopy(state.get(by_id, "event", event_id, "id")))


ROUTES: list[ApiRoute] = [
    ("GET", r"/v1/events/([^/]+)", retrieve_event),
]
