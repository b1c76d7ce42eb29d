"""What keeps another site from using the web view: CSRF tokens and security headers.

* **CSRF.** The forms that change what a browser holds (log in, log out) are POSTs that
  carry a token only a page of this server can have handed out: HMAC-SHA256 of a random
  nonce under a per-process secret. The nonce lives in a cookie (``cas_csrf``: HttpOnly,
  SameSite=Strict, path ``/ui``); a POST is taken only when its form's token is the HMAC
  of its cookie's nonce, and its ``Origin``, when the browser sends one, is this server.
  Another site can neither read the token (same-origin policy) nor make the browser send
  the cookie (SameSite=Strict), so a cross-site POST never logs anyone in or out. A
  double-submit cookie alone would do in browsers; the HMAC also stops a site that can
  set cookies on a sibling host from choosing both halves. The secret is new at each
  start: a form left open across a restart is refused once, and its page gives a new one.
* **Headers.** Every response of the server carries a Content-Security-Policy (only this
  origin's stylesheets and images, no script at all, no framing, forms only to itself),
  ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff`` and
  ``Referrer-Policy: same-origin`` (:class:`SecurityHeaders`, around the whole app).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from cas.errors import Forbidden

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "HEADERS", "Csrf", "SecurityHeaders", "set_nonce"]

CSRF_COOKIE = "cas_csrf"
#: The form field holding the token.
CSRF_FIELD = "csrf"
#: What every response carries. The pages have no script; ``data:`` images are the empty
#: favicon (without it the browser asks for /favicon.ico and logs a 404).
HEADERS: dict[str, str] = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'none'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_RAW_HEADERS = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
_NONCE_HEX = 32  # 16 random bytes


class Csrf:
    """CSRF tokens of one server process: issued to pages, checked on POSTs."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _token(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def issue(self, request: Request) -> tuple[str, str | None]:
        """The token for a page's forms, and the nonce to set as the cookie (None when the
        request's cookie already holds a well-formed one, which is then kept)."""
        nonce = request.cookies.get(CSRF_COOKIE, "")
        if len(nonce) == _NONCE_HEX and all(c in "0123456789abcdef" for c in nonce):
            return self._token(nonce), None
        nonce = secrets.token_hex(_NONCE_HEX // 2)
        return self._token(nonce), nonce

    def check(self, request: Request, token: str) -> None:
        """Raise Forbidden (403) unless ``token`` (the form's) fits the request's cookie
        and the request comes from this server's own pages."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise Forbidden(f"a form posted from another site ({origin[:80]}) is refused")
        nonce = request.cookies.get(CSRF_COOKIE, "")
        if not nonce or not hmac.compare_digest(self._token(nonce), token):
            raise Forbidden("the form's CSRF token is missing or stale; reload the page and retry")


def set_nonce(response: Response, request: Request, nonce: str | None) -> Response:
    """Set the CSRF cookie on ``response`` when :meth:`Csrf.issue` made a new nonce."""
    if nonce is not None:
        response.set_cookie(CSRF_COOKIE, nonce, httponly=True, samesite="strict", path="/ui",
                            secure=request.url.scheme == "https")
    return response


Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


class SecurityHeaders:
    """ASGI middleware: adds :data:`HEADERS` to every HTTP response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in _RAW_HEADERS if h[0] not in have)]
            await send(message)

        await self.app(scope, receive, with_headers)
