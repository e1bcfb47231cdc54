"""Who may talk to the server.

- API key: with a key configured, every endpoint but /health and the page's static file needs
  `Authorization: Bearer <key>` (the OpenAI clients' header), compared in constant time, and checked before the
  request body is read (request_guard.py), so that a client without the key learns nothing but 401.
- Host check: without a key, the server answers only requests whose Host header names it (`--allowed-hosts`; default
  the bound address and localhost). A web page on another site can make a browser send requests to 127.0.0.1 by
  pointing its own DNS name there (DNS rebinding); the Host header still carries that name, so they get 421.

References: RFC 6750 (bearer tokens); RFC 9110 (421 Misdirected Request); Starlette's TrustedHostMiddleware, whose
check this is, with our error body.
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Iterable

from fastapi import HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from maemi.serve.errors import error_body

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_ANY_ADDRESS = ("0.0.0.0", "::", "")

bearer = HTTPBearer(auto_error=False, description="The key in the environment variable named by "
                                                  "`maemi serve --api-key-env`")


def check_api_key(request: Request) -> None:
    """HTTPException 401 unless the request carries the server's key (or the server has none)."""
    expected = request.app.state.maemi.config.api_key
    if expected is None:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPException(401, "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(key.strip().encode("utf-8"), expected.encode("utf-8")):
        raise HTTPException(401, "wrong API key", headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """check_api_key as a dependency: for routes outside the guarded routers, and for the OpenAPI schema."""
    check_api_key(request)


def default_allowed_hosts(bound: str) -> tuple[str, ...]:
    """localhost, and the address the server is bound to (this machine's names when bound to every address)."""
    if bound in _ANY_ADDRESS:
        return tuple(dict.fromkeys([*LOCAL_HOSTS, socket.gethostname(), socket.getfqdn()]))
    return tuple(dict.fromkeys([*LOCAL_HOSTS, bound.strip("[]")]))


def host_name(header: str) -> str:
    """The host of a Host header, without the port: 'example.org:8000' -> 'example.org', '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class AllowedHosts:
    """ASGI middleware: 421 for a request whose Host is not one of `hosts` ("*" allows any)."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.strip().lower().strip("[]") for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(header) not in self.hosts:
                message = (f"this server does not answer to the host {header[:100]!r}; it answers to "
                           f"{', '.join(sorted(self.hosts))} (maemi serve --allowed-hosts)")
                await JSONResponse(error_body(scope["path"], 421, message), status_code=421)(scope, receive, send)
                return
        await self.app(scope, receive, send)
