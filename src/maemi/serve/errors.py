"""How the server says no: every refusal is a 4xx (or 503/504) whose message says what is wrong, in the body clients
expect. MAEMI's own routes answer {"detail": message} (FastAPI's shape); the OpenAI-compatible routes answer OpenAI's
error object {"error": {"message", "type", "param", "code"}}, so OpenAI clients show the message.

Status codes: 400 bad request, 401 missing or wrong key, 409 the run cannot do it, 413 too large (bytes, pixels,
decoded memory, prompt), 415 not an image, 421 a Host the server does not answer to, 422 invalid fields or an image
that cannot be read, 503 queue full, 504 past the request timeout. A bug is a 500 in the same shape, never a traceback.

References: OpenAI API reference (error objects); FastAPI (exception handlers).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from maemi.assistant import RunError
from maemi.serve.batcher import BatcherBusy, BatcherTimeout

log = logging.getLogger("maemi.serve")

OPENAI_PREFIXES = ("/v1/chat/", "/v1/models")
_OPENAI_TYPES = {401: "authentication_error", 404: "not_found_error", 500: "server_error", 503: "server_busy",
                 504: "timeout"}


class RequestError(ValueError):
    """A request the server refuses; `status` is the HTTP status to answer with, str(e) the message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def error_body(path: str, status: int, message: str) -> dict:
    if path.startswith(OPENAI_PREFIXES):
        kind = _OPENAI_TYPES.get(status, "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return {"detail": message}


def error_response(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message), status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError):
        return error_response(request, e.status, str(e))

    @app.exception_handler(BatcherBusy)
    async def busy(request: Request, e: BatcherBusy):
        return error_response(request, 503, str(e), headers={"Retry-After": "1"})

    @app.exception_handler(BatcherTimeout)
    async def timeout(request: Request, e: BatcherTimeout):
        return error_response(request, 504, str(e))

    @app.exception_handler(RunError)
    async def run_error(request: Request, e: RunError):
        return error_response(request, 409, f"the served run cannot do this: {e}")

    @app.exception_handler(ValueError)  # the Assistant's input checks (over-long prompt, too many shots, ...)
    async def bad_value(request: Request, e: ValueError):
        return error_response(request, 400, str(e))

    @app.exception_handler(MemoryError)  # a decode the budget let through but the machine could not hold right now
    async def out_of_memory(request: Request, e: MemoryError):
        return error_response(request, 413, "not enough free memory to process this request's image(s) now; send a "
                                            "smaller image (maemi serve --max-image-megapixels) or retry later")

    @app.exception_handler(HTTPException)  # Starlette's: 404 and 405 from the router too
    async def http_error(request: Request, e: HTTPException):
        return error_response(request, e.status_code, str(e.detail), headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return error_response(request, 422, f"invalid request: {problems}")

    @app.exception_handler(Exception)  # a bug: logged with its traceback, answered in the route's error shape
    async def bug(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, f"internal server error ({type(e).__name__}); the server log has the "
                                            "details")
