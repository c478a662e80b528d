"""The HTTP app: POST /v1/read, GET /v1/models, /healthz, /readyz, OpenAPI docs at /docs, the page at /.

Built on the recognizer contract only (`preprocess`, `predict_batch`), so any backend serves. Image decoding
runs on a small thread pool and the model on its own thread (see batcher.py): the event loop only moves bytes.
Every refusal is JSON {"detail": "..."} with its status; a request can neither read a path nor write a file
(uploads stay in memory, file names are only echoed back).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from masterocr import __version__
from masterocr.data.image import ImageError, content_width, load_image
from masterocr.reading import ReadResult
from masterocr.serve.backends import describe
from masterocr.serve.batcher import Batcher, QueueFull
from masterocr.serve.uploads import ReadRequest, RequestError, Upload, parse_uploads

log = logging.getLogger("masterocr.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
API_KEY_HEADER = "X-API-Key"


@dataclass
class ServeConfig:
    """Server settings (the `masterocr serve` flags)."""

    model_name: str = "model"
    backend: str = "torch"
    max_batch: int = 64
    batch_wait_ms: float = 10.0
    max_upload_mb: float = 10.0
    max_files: int = 64
    max_queue: int | None = None   # images waiting for the model; default max(8 x max_batch, 2 x max_files)
    api_key: str | None = None     # None: no key needed
    decode_workers: int = 2

    def __post_init__(self):
        for key in ("max_batch", "max_files", "decode_workers"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} {getattr(self, key)}: must be at least 1")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms {self.batch_wait_ms}: must not be negative")
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb {self.max_upload_mb}: must be positive")
        if self.api_key is not None and not self.api_key:
            raise ValueError("the API key is empty")
        if self.max_queue is None:
            self.max_queue = max(8 * self.max_batch, 2 * self.max_files)
        if self.max_queue < self.max_files:
            raise ValueError(f"max_queue {self.max_queue} is below max_files {self.max_files}: "
                             "a full request could never be queued")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


# ---- response shapes (for the OpenAPI docs; responses are built as plain dicts for speed) ----------------

class AttentionOut(BaseModel):
    valid_fraction: float = Field(..., description="share of each map's width that covers the image (the rest "
                                                   "is padding of a keep-aspect model); 1 when stretched")
    maps: list[list[list[float]]] = Field(..., description="per character, the decoder's attention over the "
                                                           "(Hf, Wf) feature map, rows top to bottom")


class ReadingOut(BaseModel):
    name: str
    text: str
    confidence: float
    char_probs: list[float]
    error: str | None = Field(None, description="why this image could not be read (text is then empty)")
    orientation: int = Field(0, description="degrees (counter-clockwise) the image was turned to be read: 0 "
                                            "unless the model's orientation mode (tall, auto) turned it")
    attention: AttentionOut | None = Field(None, description="with ?attention=true, for models with attention")


class ReadResponse(BaseModel):
    model: str
    results: list[ReadingOut]


class ErrorOut(BaseModel):
    detail: str


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorOut} for code in codes}


# ---- the service behind the routes ------------------------------------------------------------------------

class Service:
    """The loaded recognizer (or why not yet), its batcher and the decoding pool."""

    def __init__(self, config: ServeConfig, recognizer: Any = None, loader: Callable[[], Any] | None = None,
                 on_load_error: Callable[[str], None] | None = None):
        if recognizer is None and loader is None:
            raise ValueError("give a recognizer or a loader")
        self.config = config
        self.recognizer = recognizer
        self.loader = loader
        self.on_load_error = on_load_error
        self.error: str | None = None
        self.batcher: Batcher | None = None
        self.decode_pool: ThreadPoolExecutor | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    async def start(self) -> None:
        self.decode_pool = ThreadPoolExecutor(self.config.decode_workers, thread_name_prefix="masterocr-decode")
        if self.recognizer is None:
            try:
                self.recognizer = await asyncio.to_thread(self.loader)  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 - reported by /readyz and the CLI
                self.error = f"could not load model {self.config.model_name!r}: {e}"
                log.error(self.error)
                if self.on_load_error is not None:
                    self.on_load_error(self.error)
                return
        batcher = Batcher(self.recognizer.predict_batch, self.config.max_batch,
                          self.config.batch_wait_ms / 1000.0, self.config.max_queue or 0)
        batcher.start()
        self.batcher = batcher
        log.info("model %s ready (%s backend)", self.config.model_name, self.config.backend)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def prepare(self, upload: Upload) -> tuple[Any, tuple[int, int] | None, str | None]:
        """(prepared input, original (w, h), None) or (None, None, error naming the upload). Runs in a thread."""
        try:
            image = load_image(upload.data)  # the pipeline's checks: format, truncation, MAX_PIXELS
            return self.recognizer.preprocess(image), image.size, None
        except ImageError as e:
            message = str(e)
            anonymous = f"<{len(upload.data)} bytes>: "  # load_image names bytes by their size
            if message.startswith(anonymous):
                message = message[len(anonymous):]
            return None, None, f"{upload.name}: {message}"
        except Exception as e:  # noqa: BLE001 - one image never fails the request
            log.exception("preprocessing %s failed", upload.name)
            return None, None, f"{upload.name}: cannot prepare image ({type(e).__name__}: {e})"

    def valid_fraction(self, image_size: tuple[int, int] | None) -> float:
        img_size = getattr(self.recognizer, "img_size", None)
        if image_size is None or img_size is None:
            return 1.0
        height, width = (int(v) for v in img_size)
        keep_aspect = bool(getattr(self.recognizer, "keep_aspect", False))
        return content_width(image_size, height, width, keep_aspect) / width

    async def read(self, uploads: list[Upload], attention: bool) -> list[dict]:
        assert self.batcher is not None
        self.batcher.check_room(len(uploads))  # before decoding anything; submit checks again
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(*(loop.run_in_executor(self.decode_pool, self.prepare, u) for u in uploads))
        good = [i for i, (item, _, _) in enumerate(prepared) if item is not None]
        readings = dict(zip(good, await self.batcher.submit([prepared[i][0] for i in good])))
        out = []
        for i, (upload, (_, size, error)) in enumerate(zip(uploads, prepared)):
            result: ReadResult | None = readings.get(i)
            if result is None:
                out.append({"name": upload.name, "text": "", "confidence": 0.0, "char_probs": [], "error": error})
                continue
            if result.error:
                log.warning("%s: %s", upload.name, result.error)
            item = {"name": upload.name, "text": result.text, "confidence": float(result.confidence),
                    "char_probs": [float(p) for p in result.char_probs],
                    "error": f"{upload.name}: {result.error}" if result.error else None,
                    "orientation": int(result.orientation)}
            if attention:
                item["attention"] = None if result.attention is None else {
                    "valid_fraction": self.valid_fraction(  # of the turn that was read
                        size[::-1] if size is not None and result.orientation % 180 else size),
                    "maps": np.round(np.asarray(result.attention, dtype=np.float64), 4).tolist()}  # (chars, Hf, Wf)
            out.append(item)
        return out


# ---- the app ---------------------------------------------------------------------------------------------

def create_app(config: ServeConfig | None = None, recognizer: Any = None, loader: Callable[[], Any] | None = None,
               on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    """The ASGI app. Give a loaded `recognizer`, or a `loader` run in a thread at startup (/readyz says 503
    until it has finished; `on_load_error(message)` is called when it fails)."""
    config = config or ServeConfig()
    service = Service(config, recognizer, loader, on_load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        load = asyncio.create_task(service.start())
        try:
            yield
        finally:
            load.cancel()
            await service.stop()

    app = FastAPIOffline(
        title="masterocr", version=__version__, lifespan=lifespan,
        description="Scene text recognition: POST word images to /v1/read; the page at / shows the reading, "
                    "each character's probability and where the model looked.")
    app.state.service = service
    api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                                  description="needed when the server was started with --api-key-env")

    def require_key(key: str | None = Security(api_key_header)) -> None:
        if config.api_key is None:
            return
        if key is None or not hmac.compare_digest(key.encode("utf-8"), config.api_key.encode("utf-8")):
            raise HTTPException(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                                headers={"WWW-Authenticate": API_KEY_HEADER})

    def require_ready() -> None:
        if not service.ready:
            raise HTTPException(503, service.error or "the model is still loading; try again shortly",
                                headers={"Retry-After": "1"})

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/healthz", tags=["health"], summary="the server is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="the model is loaded", responses=_errors(503))
    async def readyz() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready", "model": config.model_name})
        status = "failed" if service.error else "loading"
        return JSONResponse({"status": status, "detail": service.error or "the model is loading"}, status_code=503)

    @app.get("/v1/models", tags=["v1"], summary="the model this server runs", dependencies=[Depends(require_key)],
             responses=_errors(401))
    async def models() -> dict:
        info = {"name": config.model_name, "backend": config.backend, "ready": service.ready}
        if service.ready:
            info.update(describe(service.recognizer, config.model_name, config.backend))
        info.update(max_batch=config.max_batch, batch_wait_ms=config.batch_wait_ms, max_files=config.max_files,
                    max_upload_bytes=config.max_bytes)
        if service.batcher is not None:  # model calls so far: how well concurrent requests are being batched
            info["batching"] = asdict(service.batcher.stats)
        return {"models": [info]}

    # The body is parsed by hand (streaming limits), so its two forms are declared for the docs here.
    json_body = ReadRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    body_schemas = {"ReadRequest": json_body, **json_body.pop("$defs", {})}
    read_body = {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": "image files (every file part is read, whatever its name)"}}}},
        "application/json": {"schema": {"$ref": "#/components/schemas/ReadRequest"}},
    }}
    generate_openapi = app.openapi

    def openapi() -> dict:
        spec = generate_openapi()  # cached by FastAPI after the first call
        spec.setdefault("components", {}).setdefault("schemas", {}).update(body_schemas)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]

    @app.post("/v1/read", tags=["v1"], summary="read the text in word images",
              dependencies=[Depends(require_key), Depends(require_ready)],
              openapi_extra={"requestBody": read_body},
              responses={200: {"model": ReadResponse}, **_errors(401, 413, 415, 422, 503)})
    async def read(request: Request, attention: bool = Query(
            False, description="also return each character's attention map")) -> JSONResponse:
        """Several images per request, as multipart files or JSON with base64 data. Each image gets its
        reading or its own `error` (an unreadable image, a non-image or a decompression bomb); the other
        images of the request are still read."""
        uploads = await parse_uploads(request, config.max_bytes, config.max_files)
        results = await service.read(uploads, attention)
        return JSONResponse({"model": config.model_name, "results": results})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
