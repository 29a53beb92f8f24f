"""The reference staff console, served at `/staff` when `STAFF_CONSOLE=true` (the demo turns it
on).

One static file (`static/staff.html`), no build step, that uses only the public API: GraphQL
over HTTP with the staff member's bearer token, and `orderChanges` over WebSocket to show orders
arriving and changing live. A shop can run on it, or copy it whole into its own back office.
The token is pasted into the page and kept in the tab's sessionStorage, never in an address; the
Content-Security-Policy is the success page's (`static_page`): its one script and style only,
connections to this origin only.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ordergraph.web.static_page import static_page


async def staff_console_page(request: Request) -> Response:
    return static_page("staff.html")
