"""The reference success page, where Stripe sends the shopper back to.

Served at `/order-success/{orderId}` only when `SUCCESS_PAGE=true` (the demo turns it on): a
production shop serves its own frontend at `FRONTEND_URL`. The page is one static file with its
script inline, so that a frontend team can read and copy it whole; the Content-Security-Policy
admits exactly that script (by its hash) and connections back to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


def _hashes(pattern: re.Pattern[str], html: str) -> str:
    return " ".join(
        "'sha256-%s'" % base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        for body in pattern.findall(html)
    )


@cache
def _page() -> tuple[str, dict[str, str]]:
    html = files("ordergraph.web").joinpath("static/order-success.html").read_text(encoding="utf-8")
    policy = (
        "default-src 'none'; "
        f"script-src {_hashes(_SCRIPT, html)}; "
        f"style-src {_hashes(_STYLE, html)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
    return html, headers


async def order_success_page(request: Request) -> Response:
    html, headers = _page()
    return HTMLResponse(html, headers=headers)
