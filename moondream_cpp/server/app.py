"""The HTTP face: OpenAI-compatible /v1/chat/completions and /v1/models, Moondream-Station-style /v1/caption,
/v1/query, /v1/detect and /v1/point, /v1/status, /health and the web demo. Every bad request is a 4xx JSON error in
the OpenAI shape; nothing a client sends stops the server. Thin over Guard (who may talk to it), Intake (request ->
queued job, bounded), Engine (the model and its queue) and the response shapes in openai_api; the worker runs for
the app's lifespan."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import skills2025
from ..errors import MoondreamError
from .engine import Engine, Job, Ticket
from .errors import ApiError
from .guard import Guard
from .images import ImagePolicy
from .intake import Intake
from .openai_api import chunk, completion, generation_options, new_id, refuse_unsupported, timings, to_query, usage
from .schemas import CaptionRequest, ChatRequest, QueryRequest, RegionRequest

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = 32 * 2**20
    max_queue: int = 16
    images: ImagePolicy = field(default_factory=ImagePolicy)
    model_name: str | None = None
    host: str = "127.0.0.1"  # the bind address: Host headers naming it are answered (guard.py)
    allowed_hosts: tuple[str, ...] = ()  # more names the server answers to ("*": any)
    allowed_origins: tuple[str, ...] = ()  # other sites whose pages may call the API ("*": any)


class JobStream(StreamingResponse):
    """An SSE answer whose job is cancelled however the response ends (finished, client gone, or never sent)."""

    def __init__(self, job: Job, content):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


async def _client_left(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: what the server receives next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)


def create_app(model, config: ServerConfig | None = None) -> FastAPI:
    cfg = config or ServerConfig()
    engine = Engine(model, cfg.max_queue)
    # no text longer than the context times the longest token can fit: refused before the worker tokenizes it
    longest_token = max((len(model.token_bytes(t)) for t in range(model.n_vocab)), default=16)
    intake = Intake(engine, cfg.images, max_body_bytes=cfg.max_body_bytes,
                    max_text_bytes=model.n_ctx * max(longest_token, 1))
    name = cfg.model_name or model.name
    # the most local crops a request may ask a 2025 model for (the load's --max-crops); 2024 models read one view
    crop_limit = model.multicrop.max_crops if model.multicrop is not None else None
    started = time.time()

    @asynccontextmanager
    async def lifespan(_):
        engine.start()
        try:
            yield
        finally:  # the answer being written ends at its next token, waiting requests are dropped
            engine.close()
            intake.close()

    app = FastAPI(title="moondream-cpp", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(Guard, bind_host=cfg.host, allowed_hosts=cfg.allowed_hosts,
                       allowed_origins=cfg.allowed_origins, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes)

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
        log.error("a request failed", exc_info=e)
        return error_response(ApiError(500, f"internal error ({e.__class__.__name__}); see the server log"))

    def queued(job: Job, ticket: Ticket) -> Job:
        try:
            return engine.submit(job, ticket)
        except BaseException:
            ticket.release()
            raise

    async def answered(job: Job, request: Request):
        """The whole answer; None when the client hung up first (its generation is cancelled, as for a stream)."""
        getting = asyncio.ensure_future(job.answer())
        leaving = asyncio.ensure_future(_client_left(request))
        try:
            await asyncio.wait({getting, leaving}, return_when=asyncio.FIRST_COMPLETED)
            return getting.result() if getting.done() else None
        finally:
            job.cancel()  # a no-op once answered
            for task in (getting, leaving):
                task.cancel()

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
    async def page():  # the web demo (static/index.html), all offline; it asks for the API key when one is set
        return FileResponse(static / "index.html")

    @app.get("/health")
    async def health():  # liveness only, open to all: nothing about the model's use or past requests
        return {"status": "ok"}

    @app.get("/v1/status")
    async def status():  # behind the API key like the rest of /v1
        return {**engine.status(), "model": name, "family": model.family, "revision": model.revision.name,
                "caption_lengths": list(model.caption_lengths), "max_crops": crop_limit,
                "skills": ["query", "caption", *(skills2025.SKILLS if model.family == "2025" else ())],
                "uptime_s": round(time.time() - started, 1)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": int(started), "owned_by": "moondream-cpp",
            "input_modalities": ["text", "image"], "output_modalities": ["text"],
            "context_length": model.n_ctx, "revision": model.revision.name, "family": model.family}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await intake.parse(ChatRequest, request)
        refuse_unsupported(req)
        ref, history, question = to_query(req.messages)
        options = generation_options(req, model.n_ctx, crop_limit)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        job = queued(*await intake.job(ref, question, history, options))
        cid = new_id()
        if not req.stream:
            a = await answered(job, request)
            return completion(name, a, cid) if a is not None else Response(status_code=499)

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

        return JobStream(job, stream_guarded(gen(), lambda e: sse(e.body()) + "data: [DONE]\n\n"))

    async def station(request: Request, req, question: str, key: str, caption: str | None = None):
        """Moondream Station's /v1/caption and /v1/query: `key` names the answer ("caption" or "answer"); a caption
        goes through the model's own caption prompts (a question for the 2024 models, templates for 2025's)."""
        options = generation_options(req.settings, model.n_ctx, crop_limit)
        job = queued(*await intake.job(req.image_url, question, [], options, caption))
        if not req.stream:
            a = await answered(job, request)
            if a is None:
                return Response(status_code=499)
            return {key: a.text, "request_id": new_id(),
                    "metrics": {"input_tokens": a.timings.get("prompt_tokens", 0),
                                "output_tokens": a.timings.get("generated_tokens", 0),
                                "prefill_time_ms": a.timings.get("prompt_ms", 0.0),
                                "decode_time_ms": a.timings.get("generation_ms", 0.0)}}

        async def gen():
            async for kind, value in job.stream():
                if kind == "piece":
                    yield sse({"chunk": value})
                else:
                    yield sse({"completed": True, "finish_reason": value.finish_reason,
                               "timings": timings(value.timings)})

        return JobStream(job, stream_guarded(gen(), lambda e: sse({**e.body(), "completed": True})))

    @app.post("/v1/caption")
    async def caption(request: Request):
        req = await intake.parse(CaptionRequest, request)
        try:  # before any image work: a length this model has not is a 400 naming the ones it has
            model.caption_items_check(req.length, "length")
        except MoondreamError as e:
            raise ApiError(400, str(e), param="length") from None
        return await station(request, req, "", "caption", caption=req.length)

    @app.post("/v1/query")
    async def query(request: Request):
        req = await intake.parse(QueryRequest, request)
        if not req.question.strip():
            raise ApiError(400, "question is required", param="question")
        return await station(request, req, req.question, "answer")

    async def region(request: Request, skill: str):
        """Moondream Station's /v1/detect ({"objects": boxes}) and /v1/point ({"points": points}): fractions of the
        image's width and height, as the model gives them. Checked before the image is read or queued."""
        req = await intake.parse(RegionRequest, request)
        if req.spatial_refs is not None:
            raise ApiError(400, "spatial_refs are not supported yet; send the object alone", param="spatial_refs")
        max_objects = req.settings.max_objects if req.settings else None
        try:
            skills2025.check_request(model, skill, req.object, max_objects)
        except MoondreamError as e:
            param = None if model.family != "2025" else "object" if not req.object.strip() else \
                "settings.max_objects"
            raise ApiError(400, str(e), param=param) from None
        options = generation_options(req.settings, model.n_ctx, crop_limit)
        job = queued(*await intake.job(req.image_url, req.object, [], options, skill=skill,
                                       max_objects=max_objects))
        found = await answered(job, request)
        if found is None:
            return Response(status_code=499)
        t = found.timings
        return {"objects" if skill == "detect" else "points": found.objects, "request_id": new_id(),
                "metrics": {"input_tokens": t.get("prompt_tokens", 0), "prefill_time_ms": t.get("prompt_ms", 0.0),
                            "decode_time_ms": t.get("objects_ms", 0.0)}}

    @app.post("/v1/detect")
    async def detect(request: Request):
        return await region(request, "detect")

    @app.post("/v1/point")
    async def point(request: Request):
        return await region(request, "point")

    return app
