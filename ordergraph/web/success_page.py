"""The reference success page, where Stripe sends the shopper back to.

Served at `/order-success/{orderId}` only when `SUCCESS_PAGE=true` (the demo turns it on): a
production shop serves its own frontend at `FRONTEND_URL`. The page is one static file with its
script inline, so that a frontend team can read and copy it whole; the Content-Security-Policy
admits exactly that script (by its hash) and connections back to this origin (`static_page`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ordergraph.web.static_page import static_page


async def order_success_page(request: Request) -> Response:
    return static_page("order-success.html")
