"""The web app: a page to drop an image on, and a small JSON API, around one :class:`Classifier`.

``GET /`` the page; ``POST /predict`` (multipart, one or more images in fields named ``file``) the
top-k classes of each; ``GET /health``; ``GET /model`` (name, classes, input size, inference mode,
limits). Every error is JSON ``{"error": message}`` with a 4xx status (5xx only for a bug).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import anyio
import torch
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..runtime.inference import Classifier
from .batcher import Batcher
from .uploads import Limits, UploadError, check_size, decode_upload

__all__ = ["create_app", "make_fast"]


class _BodyTooLarge(Exception):
    pass


def _limited(receive: Any, limit: int) -> Any:
    """``receive`` that stops a request body at ``limit`` bytes, whatever its Content-Length claimed."""
    seen = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return wrapped


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def make_fast(clf: Classifier, precision: str = "auto", heldout: str | os.PathLike | None = None) -> Classifier:
    """Put ``clf`` in the fastest accepted inference mode. With ``heldout`` (a folder of images like those
    it will serve; up to 256 are read) a reduced precision must agree with fp32 on their top-1."""
    from ..data import loaders
    from ..runtime.inference import image_paths

    images = None
    if heldout is not None and precision == "auto":
        decoded = []
        for path in image_paths([heldout])[:256]:
            try:
                decoded.append(clf.decode(path))
            except loaders.DECODE_ERRORS:
                continue
        images = clf.preprocess(torch.stack(decoded)) if decoded else None
    return clf.fast(images, precision)


def create_app(
    classifier: Classifier,
    *,
    limits: Limits | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 2.0,
    decode_threads: int | None = None,
) -> FastAPI:
    """The app serving ``classifier`` as it is (call :meth:`Classifier.fast` first for the fast mode).

    ``max_batch=1`` turns batching of concurrent requests off. ``decode_threads`` bounds how many uploads
    are read and decoded at once (so their memory), by default the number of CPUs, at most 4.
    """
    batcher = Batcher(classifier, max_batch=max_batch, max_wait_ms=max_wait_ms)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    app = FastAPI(title="AlexNet", lifespan=_lifespan, docs_url=None, redoc_url=None)  # no CDN-hosted doc pages
    app.state.classifier, app.state.batcher, app.state.limits = classifier, batcher, limits or Limits()
    app.state.decoders = anyio.CapacityLimiter(decode_threads or min(cpus, 4))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(_routes)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await app.state.batcher.start()
    try:
        yield
    finally:
        await app.state.batcher.stop()


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


async def _server_error(_request: Request, exc: Exception) -> JSONResponse:
    # A bug: the client still gets JSON; the traceback goes to the server's log.
    return _error(500, f"internal error ({type(exc).__name__}); the server's log has the details")


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(422, f"{where}: {first.get('msg', 'invalid request')}")


# The routes read what they serve from ``request.app.state`` (set by :func:`create_app`).
_routes = APIRouter()


@_routes.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text("utf-8"))


@_routes.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", "model": request.app.state.classifier.card.model}


@_routes.get("/model")
async def model(request: Request) -> dict[str, Any]:
    clf, batcher, limits = request.app.state.classifier, request.app.state.batcher, request.app.state.limits
    card = clf.card
    return {
        "model": card.model,
        "classes": list(card.classes),
        **({"words": list(card.words)} if card.words else {}),
        "num_classes": card.num_classes,
        "input_size": card.input_size,
        "resize_size": card.resize_size,
        "mean": list(card.mean),
        "std": list(card.std),
        "inference": {k: v for k, v in clf.mode.items() if isinstance(v, str | int | float)},
        "device": str(clf.device),
        "source": os.path.basename(clf.source),
        "batching": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000},
        "limits": {
            "max_upload_bytes": limits.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "max_files": limits.max_files,
        },
    }


def _prepare(clf: Classifier, limits: Limits, name: str, file: Any) -> tuple[torch.Tensor, tuple[int, int]]:
    # Read inside the decoding limiter: at most that many uploads are in memory at once.
    file.seek(0)
    image, size = decode_upload(clf, name, file.read(limits.max_upload_bytes + 1), limits)
    return clf.preprocess(image[None]), size


@_routes.post("/predict")
async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000)) -> JSONResponse:
    start = time.perf_counter()
    clf, limits = request.app.state.classifier, request.app.state.limits
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        return _error(413, f"request of {int(declared)} bytes is over the limit of {limits.max_request_bytes}")
    limited = Request(request.scope, _limited(request.receive, limits.max_request_bytes))
    decoded, names = [], []
    try:
        async with limited.form(max_files=limits.max_files, max_fields=limits.max_files) as form:
            uploads = form.getlist("file")
            if not uploads:
                return _error(400, "no image: send it as multipart/form-data in a field named 'file'")
            if not all(isinstance(u, UploadFile) for u in uploads):
                return _error(400, "the 'file' field must be a file upload, not text")
            names = [u.filename or f"file {i + 1}" for i, u in enumerate(uploads)]
            for name, u in zip(names, uploads, strict=True):
                if u.size is not None:  # refuse an oversized file before any is decoded
                    check_size(name, u.size, limits)
            decode_start = time.perf_counter()
            for name, u in zip(names, uploads, strict=True):
                decoded.append(
                    await anyio.to_thread.run_sync(
                        _prepare, clf, limits, name, u.file, limiter=request.app.state.decoders
                    )
                )
            decode_ms = (time.perf_counter() - decode_start) * 1000
    except _BodyTooLarge:
        return _error(413, f"request body over the limit of {limits.max_request_bytes} bytes")
    except ClientDisconnect:  # gone, or cut off by the server's body timeout: nobody reads this answer
        return _error(400, "the client closed the connection before sending the whole request")
    except UploadError as e:
        return _error(e.status, str(e))
    logits, info = await request.app.state.batcher.submit(torch.cat([x for x, _ in decoded]))
    probs = logits.float().softmax(1)
    k = min(top_k, clf.card.num_classes)
    values, indices = probs.topk(k, dim=1)
    results = []
    for name, (_, (w, h)), v, ix in zip(names, decoded, values.tolist(), indices.tolist(), strict=True):
        top = [{"class": clf.card.classes[c], "index": c, "probability": p} for p, c in zip(v, ix, strict=True)]
        if clf.card.words:
            for t in top:
                t["words"] = clf.card.name(t["index"])
        results.append({"file": name, "width": w, "height": h, "top": top})
    return JSONResponse(
        {
            "results": results,
            "model": clf.card.model,
            "mode": clf.mode.get("mode"),
            "batch_size": info.batch_size,
            "inference_ms": info.inference_ms,
            "decode_ms": decode_ms,
            "total_ms": (time.perf_counter() - start) * 1000,
        }
    )
