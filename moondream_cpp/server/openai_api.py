"""OpenAI chat messages -> one moondream query: the image first, earlier turns as moondream's Question/Answer
history, the last user message as the question (2025 models answer each question alone, as upstream asks them: the
runtime leaves the history out of their prompt). Plus the response shapes (plain and SSE chunks)."""
from __future__ import annotations

import time
import uuid

from ..errors import MoondreamError
from ..options import GenerationOptions
from .errors import ApiError
from .schemas import ChatRequest, ImagePart, Message, Sampling, TextPart


def _parts(content) -> tuple[list[str], list[str]]:
    """(texts, image refs) of one validated message's content (a string or a list of parts)."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    texts = [p.text for p in content if isinstance(p, TextPart)]
    images = [p.image_url if isinstance(p.image_url, str) else p.image_url.url
              for p in content if isinstance(p, ImagePart)]
    return texts, images


def refuse_unsupported(req: ChatRequest) -> None:
    """400 for request fields a client relies on that moondream cannot honour, rather than quietly ignoring them
    (fields that change nothing an answer depends on, such as user or metadata, stay accepted)."""
    if req.n not in (None, 1):
        raise ApiError(400, "n must be 1: moondream-cpp returns one choice per request (send several requests, "
                       "with a temperature, for several answers)", param="n")
    for key in ("tools", "functions"):
        if getattr(req, key):
            raise ApiError(400, f"moondream cannot call tools; leave {key} out", param=key)
    if req.response_format is not None and req.response_format.type != "text":
        raise ApiError(400, "response_format: moondream answers in plain text only; leave it out or use "
                       '{"type": "text"}', param="response_format")
    if req.logprobs or req.top_logprobs:
        raise ApiError(400, "logprobs are not available from moondream-cpp; leave logprobs out", param="logprobs")


def generation_options(s: Sampling | None, n_ctx: int, max_crops: int | None = None) -> GenerationOptions:
    """The validated request's settings as the runtime's options (None: the defaults). max_crops: the server's limit
    on a request's max_crops (a 2025 model's --max-crops); None: the model reads one view and ignores the setting."""
    if s is None:
        return GenerationOptions()
    max_tokens = s.max_completion_tokens if s.max_completion_tokens is not None else s.max_tokens
    if max_tokens is not None and max_tokens > n_ctx:
        raise ApiError(400, f"max_tokens must be at most {n_ctx}, the model's context size", param="max_tokens")
    if s.max_crops is not None and max_crops is not None and s.max_crops > max_crops:
        raise ApiError(400, f"max_crops {s.max_crops} is over this server's limit of {max_crops} crops per image "
                       "(its --max-crops, by default the model's own); ask for at most that many, or restart the "
                       "server with a higher --max-crops", param="max_crops")
    given = {"max_tokens": max_tokens, "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed,
             "stop": (s.stop,) if isinstance(s.stop, str) else tuple(s.stop or ()),
             "max_crops": s.max_crops if max_crops is not None else None}
    try:
        return GenerationOptions.of(**{k: v for k, v in given.items() if v is not None})
    except MoondreamError as e:  # a value the API's range allows but the runtime does not
        raise ApiError(400, str(e)) from None


def to_query(messages: list[Message]) -> tuple[str, list[tuple[str, str]], str]:
    """(image ref, history pairs, question) from validated OpenAI messages; 400 for what moondream cannot answer."""
    if not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    images: list[str] = []
    turns: list[tuple[str, str]] = []  # (role, text)
    for n, m in enumerate(messages):
        texts, imgs = _parts(m.content)
        if imgs and m.role != "user":
            raise ApiError(400, f"messages[{n}]: images belong in user messages", param="messages")
        images += imgs
        if m.role in ("user", "assistant"):  # moondream has no system prompt: system messages are ignored
            turns.append((m.role, " ".join(t.strip() for t in texts if t.strip())))
    if not images:
        raise ApiError(400, "moondream answers questions about an image: add an image_url part to a user message",
                       param="messages")
    if len(set(images)) > 1:
        raise ApiError(400, "moondream looks at one image per conversation; send one image (start a new "
                       "conversation for another)", param="messages")
    if not turns or turns[-1][0] != "user" or not turns[-1][1]:
        raise ApiError(400, "the last message must be a user message with a question", param="messages")
    history, pending = [], None
    for role, text in turns[:-1]:
        if role == "user":
            pending = f"{pending} {text}".strip() if pending else text
        elif pending:  # an assistant answer closes a Question/Answer turn
            history.append((pending, text))
            pending = None
    question = f"{pending} {turns[-1][1]}".strip() if pending else turns[-1][1]
    return images[0], history, question


def timings(t: dict) -> dict:
    """Our timings in llama.cpp server's names (plus the cache flags)."""
    return {"prompt_n": t.get("prompt_evaluated", 0), "prompt_ms": t.get("prompt_ms", 0.0),
            "prompt_per_second": t.get("prompt_per_second", 0.0), "predicted_n": t.get("generated_tokens", 0),
            "predicted_ms": t.get("generation_ms", 0.0), "predicted_per_second": t.get("generation_per_second", 0.0),
            "cache_n": t.get("prompt_tokens", 0) - t.get("prompt_evaluated", 0),
            "image_encode_ms": t.get("image_encode_ms", 0.0), "image_cached": t.get("image_cached", False),
            "prefix_restored": t.get("prefix_restored", False),
            # 2025 models, when the image was encoded for this answer: how it was read
            **{k: t[k] for k in ("image_tiling", "vision_passes", "vision_ms") if k in t}}


def usage(t: dict) -> dict:
    p, c = t.get("prompt_tokens", 0), t.get("generated_tokens", 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(model: str, answer, cid: str) -> dict:
    finish = "stop" if answer.finish_reason in ("stop", "cancelled") else "length"
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": finish, "logprobs": None}],
            "usage": usage(answer.timings), "timings": timings(answer.timings)}


def chunk(model: str, cid: str, delta: dict, finish: str | None = None, extra: dict | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if extra:
        out.update(extra)
    return out
