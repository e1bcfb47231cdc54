"""The route class of the API routers: what every request gets before and around its handler.

- The API key is checked first, before the body is read or parsed: a client without the key gets 401, never a
  validation error that would tell it about the API.
- One deadline, `maemi serve --timeout`, covers the whole request: reading the body, decoding, queueing and the model.
  Past it the handler is cancelled and the client gets 504.
- A client that disconnects cancels its handler too.

Cancelling the handler cancels what it awaits: a decode still waiting for a decoding thread is dropped (decoding.py),
and so is a batch item still in the queue (batcher.py), so that no work is done for an answer nobody will read.

References: FastAPI's "custom APIRoute class" (get_route_handler); the ASGI HTTP spec (http.disconnect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

from maemi.serve.batcher import BatcherTimeout
from maemi.serve.security import check_api_key

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away; nobody reads it


class GuardedRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handle = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            check_api_key(request)
            timeout = request.app.state.maemi.config.batcher.timeout_s
            body_read = asyncio.Event()
            work = asyncio.ensure_future(handle(Request(request.scope, _noting_the_end(request.receive, body_read))))
            gone = asyncio.ensure_future(_client_gone(request.receive, body_read))
            try:
                await asyncio.wait({work, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not work.done():
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
            if work.cancelled():
                if gone.done() and not gone.cancelled():
                    return Response(status_code=CLIENT_CLOSED_REQUEST)
                raise BatcherTimeout(f"no answer within the server's {timeout:g} s request timeout (maemi serve "
                                     "--timeout)")
            return work.result()

        return guarded


def _noting_the_end(receive: Receive, body_read: asyncio.Event) -> Receive:
    """`receive` that sets `body_read` once the last chunk of the body has arrived."""

    async def receive_noting() -> Message:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_read.set()
        return message

    return receive_noting


async def _client_gone(receive: Receive, body_read: asyncio.Event) -> None:
    """Returns when the client disconnects. Listens only once the handler has the whole body: before that, the
    messages are the body's."""
    await body_read.wait()
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # nothing else is expected after the body; do not spin if something comes
