"""One static HTML page from `ordergraph/web/static/`, served with a Content-Security-Policy
that admits exactly its inline `<script>` and `<style>` blocks (by their SHA-256 hashes,
computed when it is first served) and connections back to this origin.

The reference pages (the success page, the staff console) are single files with their script
and style inline, so that a frontend team can read and copy each one whole; nothing else may
run in them: no other script, no inline event handler, no `eval`, nothing from elsewhere.

Example:
    async def my_page(request: Request) -> Response:
        return static_page("my-page.html")
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files

from starlette.responses import HTMLResponse

_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


def _hashes(pattern: re.Pattern[str], html: str) -> str:
    return " ".join(
        "'sha256-%s'" % base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        for body in pattern.findall(html)
    )


@cache
def _page(name: str) -> tuple[str, dict[str, str]]:
    html = files("ordergraph.web").joinpath(f"static/{name}").read_text(encoding="utf-8")
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


def static_page(name: str) -> HTMLResponse:
    """The page `static/<name>` with its policy (read and hashed once per process)."""
    html, headers = _page(name)
    return HTMLResponse(html, headers=headers)
