"""The HTTP face: OpenAI-compatible /v1/chat/completions and /v1/models, Moondream-Station-style /v1/caption and
/v1/query, /health. Every bad request is a 4xx JSON error in the OpenAI shape; nothing a client sends stops the
server. Thin over Engine (the model and its queue), the request models in schemas and the parsers in openai_api /
images; the model's worker thread runs for the app's lifespan."""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import spec
from ..errors import MoondreamError
from .engine import Engine, Job
from .errors import ApiError
from .images import ImagePolicy
from .images import load as load_image_ref
from .openai_api import chunk, completion, generation_options, new_id, refuse_unsupported, timings, to_query, usage
from .schemas import CaptionRequest, ChatRequest, QueryRequest, parse


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = 32 * 2**20
    max_queue: int = 16
    images: ImagePolicy = field(default_factory=ImagePolicy)
    model_name: str | None = None


def create_app(model, config: ServerConfig | None = None) -> FastAPI:
    cfg = config or ServerConfig()
    engine = Engine(model, cfg.max_queue)
    name = cfg.model_name or model.name
    started = time.time()

    @asynccontextmanager
    async def lifespan(_):
        engine.start()
        try:
            yield
        finally:  # the answer being written ends at its next token, waiting requests are dropped
            engine.close()

    app = FastAPI(title="moondream-cpp", docs_url=None, redoc_url=None, lifespan=lifespan)

    def error_response(e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e):
        return error_response(ApiError(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def _bug(_, e):
        return error_response(ApiError(500, f"internal error: {e.__class__.__name__}"))

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        # auth on every route but /health; both OpenAI (Bearer) and the moondream client's header are accepted
        if cfg.api_key and request.url.path != "/health":
            got = request.headers.get("authorization", "")
            token = got[7:] if got.lower().startswith("bearer ") else request.headers.get("x-moondream-auth", "")
            if not hmac.compare_digest(token.encode(), cfg.api_key.encode()):
                return error_response(ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                               code="invalid_api_key"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            # a client still sending when we close gets a broken pipe, not our 413: read (and drop) a body up to
            # 8x the limit first; a larger one is cut off at once
            if int(length) <= 8 * cfg.max_body_bytes:
                async for _ in request.stream():
                    pass
            return error_response(ApiError(413, f"the request body is {length} bytes, over the "
                                           f"{cfg.max_body_bytes}-byte limit", code="body_too_large"))
        return await call_next(request)

    async def body(request: Request) -> bytes:
        """The raw body, refused as soon as it passes the limit (a chunked body has no Content-Length to check)."""
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > cfg.max_body_bytes:
                raise ApiError(413, f"the request body is over the {cfg.max_body_bytes}-byte limit",
                               code="body_too_large")
        return bytes(raw)

    async def image_of(ref):
        return await asyncio.to_thread(load_image_ref, ref, cfg.images)  # decoding is CPU work: off the loop

    async def job_answer(job: Job):
        engine.submit(job)
        return await job.answer()

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def stream_guarded(gen, on_error):
        try:
            async for s in gen:
                yield s
        except ApiError as e:  # after the headers went out, errors travel in the stream
            yield on_error(e)

    # ---------------------------------------------------------------------------------------------- routes
    static = Path(__file__).parent / "static"
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    async def page():  # the web demo (static/index.html), all offline
        return FileResponse(static / "index.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "busy": engine.busy, "waiting": engine.waiting,
                "served": engine.served, "cancelled": engine.cancelled, "last": engine.last,
                "uptime_s": round(time.time() - started, 1)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": int(started), "owned_by": "moondream-cpp",
            "input_modalities": ["text", "image"], "output_modalities": ["text"],
            "context_length": model.n_ctx, "revision": model.revision.name}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse(ChatRequest, await body(request))
        refuse_unsupported(req)
        ref, history, question = to_query(req.messages)
        job = Job(await image_of(ref), question, history, generation_options(req, model.n_ctx))
        cid = new_id()
        if not req.stream:
            return completion(name, await job_answer(job), cid)
        engine.submit(job)  # a full queue is a 503 before any byte of the stream is sent
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def gen():
            yield sse(chunk(name, cid, {"role": "assistant", "content": ""}))
            async for kind, value in job.stream():
                if kind == "piece":
                    yield sse(chunk(name, cid, {"content": value}))
                else:
                    finish = "length" if value.finish_reason == "length" else "stop"
                    extra = {"timings": timings(value.timings)}
                    if include_usage:
                        extra["usage"] = usage(value.timings)
                    yield sse(chunk(name, cid, {}, finish, extra))
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream_guarded(gen(), lambda e: sse(e.body()) + "data: [DONE]\n\n"),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def station(req, question: str, key: str):
        """Moondream Station's /v1/caption and /v1/query: `key` names the answer ("caption" or "answer")."""
        job = Job(await image_of(req.image_url), question, [], generation_options(req.settings, model.n_ctx))
        if not req.stream:
            a = await job_answer(job)
            return {key: a.text, "request_id": new_id(),
                    "metrics": {"input_tokens": a.timings.get("prompt_tokens", 0),
                                "output_tokens": a.timings.get("generated_tokens", 0),
                                "prefill_time_ms": a.timings.get("prompt_ms", 0.0),
                                "decode_time_ms": a.timings.get("generation_ms", 0.0)}}
        engine.submit(job)

        async def gen():
            async for kind, value in job.stream():
                if kind == "piece":
                    yield sse({"chunk": value})
                else:
                    yield sse({"completed": True, "finish_reason": value.finish_reason,
                               "timings": timings(value.timings)})

        return StreamingResponse(stream_guarded(gen(), lambda e: sse({**e.body(), "completed": True})),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/caption")
    async def caption(request: Request):
        req = parse(CaptionRequest, await body(request))
        try:
            question = spec.caption_question(req.length)
        except MoondreamError as e:
            raise ApiError(400, str(e), param="length") from None
        return await station(req, question, "caption")

    @app.post("/v1/query")
    async def query(request: Request):
        req = parse(QueryRequest, await body(request))
        if not req.question.strip():
            raise ApiError(400, "question is required", param="question")
        return await station(req, req.question, "answer")

    return app
