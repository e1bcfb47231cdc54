"""The MAEMI server: a FastAPI app around one Assistant, for the lab's network.

- `/`: the web page (one static file shipped in the package; no CDN, works offline).
- `/health`: liveness and batching counters; the only endpoint open without the API key.
- `/v1/ask|caption|classify|measure|preview` (api.py) and the OpenAI-compatible `/v1/chat/completions`, `/v1/models`
  (openai_compat.py); `/openapi.json` describes them all. FastAPI's /docs is off: it loads its UI from a CDN.
- Bad input is a 4xx that says what is wrong: 400 bad request, 401 missing or wrong key, 409 the run cannot do it
  (e.g. trained without captions), 413 too large, 415 not an image, 422 an image that cannot be read (truncated,
  decompression bomb); 503 when the queue is full, 504 past the request timeout. Errors of the OpenAI-compatible
  routes use OpenAI's error object, so its clients show the message.

References: FastAPI (lifespan, dependencies, request body limits); OpenAI API reference (error objects).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from maemi import __version__
from maemi.assistant import Assistant, RunError
from maemi.serve import api, openai_compat
from maemi.serve.batcher import BatcherBusy, BatcherConfig, BatcherTimeout
from maemi.serve.inference import BatchedAssistant
from maemi.serve.security import require_api_key
from maemi.serve.uploads import UploadError


@dataclass
class ServeConfig:
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    max_upload_mb: float = 20.0  # per image
    api_key: str | None = None  # None: no authentication (bind to 127.0.0.1 then)
    shots: int = 0  # default demonstrations per /v1/classify request
    support: str | None = None  # labelled images for few-shot; None: the run's training images
    model_name: str = "maemi"

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.shots < 0:
            raise ValueError(f"ServeConfig needs max_upload_mb > 0 and shots >= 0, got {self.max_upload_mb}, "
                             f"{self.shots}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        # A chat request carries its image in base64 (4/3 of the bytes) inside JSON; a form may carry several.
        return self.max_upload_bytes * 4 // 3 + 2**20


@dataclass
class ServerState:
    model: BatchedAssistant
    config: ServeConfig
    started: int  # unix time


def _is_openai_route(request: Request) -> bool:
    return request.url.path.startswith(("/v1/chat/", "/v1/models"))


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    if _is_openai_route(request):
        kind = {401: "authentication_error", 503: "server_busy", 504: "timeout"}.get(status, "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    else:
        body = {"detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(request: Request, e: UploadError):
        return _error(request, e.status, str(e))

    @app.exception_handler(BatcherBusy)
    async def busy(request: Request, e: BatcherBusy):
        return _error(request, 503, str(e), headers={"Retry-After": "1"})

    @app.exception_handler(BatcherTimeout)
    async def timeout(request: Request, e: BatcherTimeout):
        return _error(request, 504, str(e))

    @app.exception_handler(RunError)
    async def run_error(request: Request, e: RunError):
        return _error(request, 409, f"the served run cannot do this: {e}")

    @app.exception_handler(ValueError)  # the Assistant's input checks (over-long prompt, too many shots, ...)
    async def bad_value(request: Request, e: ValueError):
        return _error(request, 400, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return _error(request, e.status_code, str(e.detail), headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return _error(request, 422, f"invalid request: {problems}")


def page_html() -> str:
    return resources.files("maemi.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(assistant: Assistant, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    model = BatchedAssistant(assistant, config.batcher, config.shots, config.support)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if config.shots:  # embed the demonstrations before the first request, not during it
            await run_in_threadpool(assistant.support_set, config.support)
        await model.batcher.start()
        yield
        await model.batcher.stop()

    app = FastAPI(title="MAEMI", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, max_body_size=config.max_body_bytes,
                  description="A small vision-language assistant for electron micrographs, served on premises.")
    app.state.maemi = ServerState(model, config, int(time.time()))
    _add_error_handlers(app)
    secured = [Depends(require_api_key)]
    app.include_router(api.router, dependencies=secured)
    app.include_router(openai_compat.router, dependencies=secured)
    page = page_html()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)  # public: the page holds no data; it asks for the key when the server needs one

    @app.get("/health", tags=["server"], summary="Liveness, settings the page needs, batching counters")
    async def health() -> dict:
        stats = model.batcher.stats
        return {"status": "ok", "model": config.model_name, "auth_required": config.api_key is not None,
                "max_upload_mb": config.max_upload_mb, "shots": config.shots, "waiting": model.batcher.waiting,
                "served": {"requests": stats.requests, "batches": stats.batches,
                           "largest_batch": stats.largest_batch}}

    @app.get("/openapi.json", include_in_schema=False, dependencies=secured)
    async def openapi() -> dict:
        return app.openapi()

    return app


def model_name(run_dir: str | Path) -> str:
    return Path(run_dir).resolve().name
