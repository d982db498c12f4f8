"""Request bodies as pydantic models, validated strictly from the raw JSON: a string is not a boolean, a float is not
a whole number, NaN and infinities are not numbers. A body that fails is a 400 in the OpenAI error shape whose message
names the field ("messages[0].content[1].image_url.url is required"). Fields a client may send that change nothing an
answer depends on (model, user, metadata, ...) are accepted and ignored; what moondream cannot honour is refused
after validation (openai_api.refuse_unsupported)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..spec2025 import MAX_CROPS
from .errors import ApiError

_NAME_LIMIT = 40  # characters of a client's value echoed back in a message


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageUrl(_Strict):
    url: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: Union[ImageUrl, str]  # OpenAI sends {"url": ...}; a bare string is accepted too


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None


class Sampling(_Strict):
    """Generation settings, in OpenAI's names and ranges (max_tokens is also bounded by the context: see
    openai_api.generation_options)."""

    max_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    max_completion_tokens: Optional[Annotated[int, Field(ge=1)]] = None  # OpenAI's newer name; wins over max_tokens
    temperature: Optional[Annotated[float, Field(ge=0, le=2)]] = None
    top_p: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    seed: Optional[Annotated[int, Field(ge=0, le=2**63 - 1)]] = None
    stop: Union[str, Annotated[list[str], Field(max_length=4)], None] = None
    # ours (2025 models): read the image in at most this many local crops, up to the server's --max-crops (checked in
    # openai_api.generation_options); 2024 models read one view and ignore it
    max_crops: Optional[Annotated[int, Field(ge=1, le=MAX_CROPS)]] = None


class ResponseFormat(_Strict):
    type: str = "text"


class StreamOptions(_Strict):
    include_usage: Optional[bool] = None


class ChatRequest(Sampling):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(description="a non-empty list of chat messages")
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    # accepted only with values that change nothing (refuse_unsupported): moondream gives one plain-text answer
    n: Optional[int] = None
    tools: Optional[list] = None
    functions: Optional[list] = None
    response_format: Optional[ResponseFormat] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None


class StationRequest(_Strict):
    """POST /v1/caption and /v1/query, as Moondream Station and the moondream client send them."""

    image_url: str = Field(description="a base64 data: URI")
    stream: Optional[bool] = None
    settings: Optional[Sampling] = None


class CaptionRequest(StationRequest):
    # checked against the loaded model's own lengths (Moondream.caption_items_check)
    length: Annotated[str, Field(max_length=32)] = "normal"


class QueryRequest(StationRequest):
    question: str


class RegionSettings(Sampling):
    """detect/point settings as the moondream client sends them (its SamplingSettings): max_objects counts; the
    sampling fields change nothing (the skills decode greedily) and are accepted as the client may send them."""

    # the revision's own limit (50) is checked with the model (skills2025.check_request), for one message
    max_objects: Optional[int] = None


class RegionRequest(_Strict):
    """POST /v1/detect and /v1/point, as Moondream Station and the moondream client send them."""

    image_url: str = Field(description="a base64 data: URI")
    object: str = Field(description="what to find, e.g. \"face\"")
    settings: Optional[RegionSettings] = None
    spatial_refs: Optional[list] = None  # the client's point(..., spatial_refs=...): refused, not yet supported


def parse(model: type[BaseModel], raw: bytes):
    """`raw` (a request body) as an instance of `model`, or an ApiError 400 that says what is wrong and where."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise _api_error(model, e, raw) from None


def _api_error(model: type[BaseModel], e: ValidationError, raw: bytes) -> ApiError:
    errors = e.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'unreadable')})")
    if not first["loc"]:
        return ApiError(400, "the body must be a JSON object")
    data = pydantic_core.from_json(raw)  # valid JSON here: only to name where each error is
    located = [(_path(err["loc"], data, err["type"] == "missing"), err) for err in errors]
    deepest = max(len(p) for p, _ in located)  # of a union's branches, the one that got furthest explains best
    path = next(p for p, _ in located if len(p) == deepest)
    here = [err for p, err in located if p == path]
    name = _name(path) or "the body"
    field = model.model_fields.get(path[0]) if len(path) == 1 else None
    return ApiError(400, _say(name, here, field.description if field else None), param=name)


def _path(loc: tuple, data, last_may_be_absent: bool) -> list:
    """The field path of an error in the client's own terms: pydantic's loc also names union branches ('str',
    'list[...]', the tag of a tagged union), which are no keys of the data, so they are left out."""
    out, here = [], data
    for k, item in enumerate(loc):
        if isinstance(here, dict) and item in here:
            here = here[item]
        elif isinstance(here, list) and isinstance(item, int) and 0 <= item < len(here):
            here = here[item]
        elif not (last_may_be_absent and k == len(loc) - 1):
            continue
        out.append(item)
    return out


def _name(path: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


def _say(name: str, errors: list[dict], description: str | None) -> str:
    first = errors[0]
    if first["type"] == "missing":
        return f"{name} is required" + (f" ({description})" if description else "")
    if first["type"] == "union_tag_invalid":
        tag = str(first["ctx"]["tag"])[:_NAME_LIMIT]
        return f"{name}: type {tag!r} is not supported ({first['ctx']['expected_tags']} are)"
    fitting = [err for err in errors if not err["type"].endswith("_type")]  # branches whose type the value has
    msgs = list(dict.fromkeys(err["msg"] for err in fitting or errors))
    if all(m.startswith("Input should be ") for m in msgs):
        return f"{name} should be " + " or ".join(m[len("Input should be "):] for m in msgs)
    return f"{name}: {'; '.join(msgs)}"
