"""API-key authentication for an on-premises server: with a key configured, every endpoint but /health and the
page's static file needs `Authorization: Bearer <key>` (the OpenAI clients' header), compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="The key in the environment variable named by "
                                                  "`maemi serve --api-key-env`")


async def require_api_key(request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    expected = request.app.state.maemi.config.api_key
    if expected is None:
        return
    if credentials is None:
        raise HTTPException(401, "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode("utf-8"), expected.encode("utf-8")):
        raise HTTPException(401, "wrong API key", headers={"WWW-Authenticate": "Bearer"})
