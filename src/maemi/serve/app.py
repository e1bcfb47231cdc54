"""The MAEMI server: a FastAPI app around one Assistant, for the lab's network.

- `/`: the web page (one static file shipped in the package; no CDN, works offline).
- `/health`: liveness and batching counters; the only endpoint open without the API key.
- `/v1/ask|caption|classify|measure|preview` (api.py) and the OpenAI-compatible `/v1/chat/completions`, `/v1/models`
  (openai_compat.py); `/openapi.json` describes them all. FastAPI's /docs is off: it loads its UI from a CDN.
- Bad input is a 4xx that says what is wrong, in the route's error shape (errors.py); every request is checked before
  it costs anything: the key before the body is read, the Host header (security.py), sizes before decoding
  (uploads.py, budget.py), the prompt before queueing; decoding runs in a bounded pool (decoding.py) and one deadline
  covers the whole request (request_guard.py).

References: FastAPI (lifespan, dependencies, request body limits); OpenAI API reference (error objects).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from maemi import __version__
from maemi.assistant import Assistant
from maemi.serve import api, openai_compat
from maemi.serve.batcher import BatcherConfig
from maemi.serve.budget import budget_bytes
from maemi.serve.decoding import DecodePool
from maemi.serve.errors import add_error_handlers
from maemi.serve.inference import BatchedAssistant
from maemi.serve.security import LOCAL_HOSTS, AllowedHosts, require_api_key
from maemi.serve.uploads import UploadLimits


@dataclass
class ServeConfig:
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    max_upload_mb: float = 20.0  # per image
    # Per image, and the decoded-memory budget (budget.py); well below the file loader's 100 MP: a server decodes
    # for strangers, several at once.
    max_image_megapixels: float = 40.0
    max_decodes: int = 2  # images decoded (and measured) at once, within one budget of memory together
    api_key: str | None = None  # None: no authentication (bind to 127.0.0.1 then)
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS  # Host headers answered without a key; "*": any
    shots: int = 0  # default demonstrations per /v1/classify request
    support: str | None = None  # labelled images for few-shot; None: the run's training images
    model_name: str = "maemi"

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_image_megapixels <= 0 or self.max_decodes < 1 or self.shots < 0:
            raise ValueError(f"ServeConfig needs max_upload_mb > 0, max_image_megapixels > 0, max_decodes >= 1 and "
                             f"shots >= 0, got {self.max_upload_mb}, {self.max_image_megapixels}, {self.max_decodes}, "
                             f"{self.shots}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def limits(self) -> UploadLimits:
        return UploadLimits(self.max_upload_bytes, self.max_image_megapixels)

    @property
    def max_body_bytes(self) -> int:
        # A chat request carries its image in base64 (4/3 of the bytes) inside JSON; a form may carry several.
        return self.max_upload_bytes * 4 // 3 + 2**20


@dataclass
class ServerState:
    model: BatchedAssistant
    config: ServeConfig
    started: int  # unix time
    decodes: DecodePool


def page_html() -> str:
    return resources.files("maemi.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(assistant: Assistant, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    model = BatchedAssistant(assistant, config.batcher, config.shots, config.support)
    decodes = DecodePool(config.max_decodes, budget_bytes(config.max_image_megapixels))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if config.shots:  # embed the demonstrations before the first request, not during it
            await run_in_threadpool(assistant.support_set, config.support)
        await model.batcher.start()
        yield
        await model.batcher.stop()
        await run_in_threadpool(decodes.close)

    app = FastAPI(title="MAEMI", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, max_body_size=config.max_body_bytes,
                  description="A small vision-language assistant for electron micrographs, served on premises.")
    app.state.maemi = ServerState(model, config, int(time.time()), decodes)
    add_error_handlers(app)
    if config.api_key is None:  # with a key, a rebound page cannot authenticate anyway
        app.add_middleware(AllowedHosts, hosts=config.allowed_hosts)
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
                "max_upload_mb": config.max_upload_mb, "max_image_megapixels": config.max_image_megapixels,
                "shots": config.shots, "waiting": model.batcher.waiting,
                "served": {"requests": stats.requests, "batches": stats.batches,
                           "largest_batch": stats.largest_batch}}

    @app.get("/openapi.json", include_in_schema=False, dependencies=secured)
    async def openapi() -> dict:
        return app.openapi()

    return app


def model_name(run_dir: str | Path) -> str:
    return Path(run_dir).resolve().name
