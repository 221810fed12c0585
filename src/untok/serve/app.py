"""The OpenAI-compatible API: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``
and ``/health``, in the request and response shapes the official ``openai`` client sends
and parses (docs/serve.md).

Tokens are the model's units: bytes for byte models, so ``max_tokens`` counts bytes and
``usage`` reports them (with ``"unit": "byte"``). untok's own sampler settings (``top_k``,
``sampler: "adaptive"``, ``low``, ``high``) ride as extra top-level fields, which the client
sends with ``extra_body``. Every error has the OpenAI shape ``{"error": {"message", "type",
"param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from torch import nn

from untok.chat import render
from untok.errors import UntokError
from untok.generate import SamplerConfig
from untok.serve.engine import Engine, Event, Spec, Unit

MAX_STOPS = 4


class ApiError(Exception):
    """An error for the client: HTTP ``status`` and the OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = \
            status, message, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=error_body(
            self.message, self.kind, self.param, self.code))


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# -- requests -------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """The fields both endpoints share (unknown fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int = Field(0, ge=0)
    sampler: Literal["standard", "adaptive"] = "standard"
    low: float = Field(0.3, ge=0.0)
    high: float = Field(2.5, ge=0.0)


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] = ""
    logprobs: int | None = Field(None, ge=0, le=5)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] = ""


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


# -- the application --------------------------------------------------------------------------

class Server:
    """What the endpoints share: the engine, the served name and the limits."""

    def __init__(self, model: nn.Module, name: str, max_prompt: int | None,
                 max_tokens: int, default_tokens: int, keepalive: float) -> None:
        self.model, self.name, self.units = model, name, model.units
        self.engine = Engine(model)
        self.max_prompt = max_prompt or model.config.context
        self.max_tokens, self.default_tokens = max_tokens, default_tokens
        self.keepalive = keepalive

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves "
                           f"'{self.name}' (GET /v1/models)", "model", "model_not_found")

    def spec(self, body: Sampling, prompt: list[int], limit: int | None, choice: int,
             top_logprobs: int | None) -> Spec:
        if len(prompt) > self.max_prompt:
            raise ApiError(400, f"the prompt is {len(prompt)} units with BOS, over this "
                           f"server's limit of {self.max_prompt}: shorten it",
                           "prompt", "context_length_exceeded")
        units = self.default_tokens if limit is None else limit
        if units > self.max_tokens:
            raise ApiError(400, f"max_tokens must be at most {self.max_tokens} (units: "
                           f"bytes for byte models), not {units}", "max_tokens")
        stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop takes at most {MAX_STOPS} strings", "stop")
        sampler = SamplerConfig(sampler=body.sampler, temperature=body.temperature,
                                top_k=body.top_k, top_p=body.top_p, low=body.low,
                                high=body.high)
        try:
            sampler.validate()
        except UntokError as exc:
            raise ApiError(400, str(exc).replace("--", ""), "sampler") from None
        seed = None if body.seed is None else body.seed + choice
        return Spec(prompt, units, sampler, seed, tuple(s.encode() for s in stops if s),
                    top_logprobs)

    def completion_prompts(self, body: CompletionRequest) -> list[list[int]]:
        units = self.units
        if isinstance(body.prompt, str):
            texts = [body.prompt]
        elif body.prompt and all(isinstance(p, int) for p in body.prompt):
            ids = list(body.prompt)
            if any(not 0 <= i < units.num_content for i in ids):
                raise ApiError(400, f"prompt ids must be text units in [0, "
                               f"{units.num_content})", "prompt")
            return [[units.bos, *ids]]
        else:
            texts = list(body.prompt) or [""]
        return [[units.bos, *units.encode(t.encode()).tolist()] for t in texts]

    def chat_prompt(self, body: ChatRequest) -> list[int]:
        try:
            ids = render([m.model_dump() for m in body.messages], self.units)
        except UntokError as exc:
            raise ApiError(400, str(exc), "messages") from None
        if max(ids) >= self.units.vocab_size:
            raise ApiError(400, "this model's units have no ids for chat role markers: "
                           "use /v1/completions", "messages")
        return ids


def create_app(model: nn.Module, name: str, *, api_key: str | None = None,
               cors_origins: list[str] | tuple[str, ...] = (), max_prompt: int | None = None,
               max_tokens: int = 4096, default_tokens: int = 256,
               keepalive: float = 10.0) -> FastAPI:
    """The FastAPI application serving ``model`` as ``name`` (see the module docstring)."""
    server = Server(model, name, max_prompt, max_tokens, default_tokens, keepalive)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.engine.close()

    app = FastAPI(title="untok", lifespan=lifespan)
    app.state.server = server
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["*"], allow_headers=["*"])

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1") and request.method != "OPTIONS" \
                and request.headers.get("authorization") != f"Bearer {api_key}":
            return ApiError(401, "missing or wrong API key: send 'Authorization: Bearer "
                            "<key>' with the key the server was started with", None,
                            "invalid_api_key").response()
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return ApiError(400, "the request body is not valid JSON").response()
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = where[0] if where else None
        message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid request')}"
        return ApiError(400, message, param, "invalid_value").response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), kind="invalid_request_error",
                        code=None).response()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": server.name, "sequences": server.engine.busy()}

    @app.get("/v1/models")
    async def models() -> dict:
        c = model.config
        return {"object": "list", "data": [{
            "id": server.name, "object": "model", "created": int(time.time()),
            "owned_by": "untok", "family": c.family, "unit": model.units.name,
            "context": c.context}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        specs = [server.spec(body, prompt, body.max_tokens, choice, body.logprobs)
                 for prompt in server.completion_prompts(body) for choice in range(body.n)]
        return await respond(server, request, specs, body, Completions())

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        server.check_model(body.model)
        prompt = server.chat_prompt(body)
        limit = body.max_completion_tokens if body.max_completion_tokens is not None \
            else body.max_tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        specs = [server.spec(body, prompt, limit, choice, top) for choice in range(body.n)]
        return await respond(server, request, specs, body, Chat())

    return app


# -- responses ------------------------------------------------------------------------------

def token_text(data: bytes) -> str:
    """A unit's bytes as a token string (partial UTF-8 as \\x escapes)."""
    return data.decode("utf-8", errors="backslashreplace")


class Completions:
    """The ``text_completion`` shapes."""

    object, prefix = "text_completion", "cmpl"

    def logprobs(self, units: list[Unit], offset: int) -> dict:
        offsets, at = [], offset
        for u in units:
            offsets.append(at)
            at += len(token_text(u.data))
        return {"tokens": [token_text(u.data) for u in units],
                "token_logprobs": [u.logprob for u in units],
                "top_logprobs": [{token_text(d): lp for d, lp in u.top} for u in units],
                "text_offset": offsets}

    def choice(self, index: int, text: str, logprobs: dict | None, finish: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def first(self, index: int) -> dict | None:
        return None

    def whole(self, index: int, text: str, logprobs: dict | None, finish: str) -> dict:
        return self.choice(index, text, logprobs, finish)

    def merge(self, total: dict | None, part: dict) -> dict:
        if total is None:
            return part
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            total[key] += part[key]
        return total


class Chat:
    """The ``chat.completion`` shapes."""

    object, prefix = "chat.completion", "chatcmpl"

    def logprobs(self, units: list[Unit], offset: int) -> dict:
        return {"content": [{
            "token": token_text(u.data), "logprob": u.logprob, "bytes": list(u.data),
            "top_logprobs": [{"token": token_text(d), "logprob": lp, "bytes": list(d)}
                             for d, lp in u.top]} for u in units]}

    def choice(self, index: int, text: str, logprobs: dict | None, finish: str | None) -> dict:
        delta = {"content": text} if text else {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def first(self, index: int) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}

    def whole(self, index: int, text: str, logprobs: dict | None, finish: str) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": finish}

    def merge(self, total: dict | None, part: dict) -> dict:
        if total is None:
            return part
        total["content"] += part["content"]
        return total


def prompt_units(seqs: list) -> int:
    """Units of the request's prompts (without BOS), each counted once however many
    choices it has."""
    prompts = {id(s.spec.prompt): s.spec.prompt for s in seqs}
    return sum(len(p) - 1 for p in prompts.values())


def usage(server: Server, prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "unit": server.units.name}


async def respond(server: Server, request: Request, specs: list[Spec], body: Sampling,
                  shape: Completions | Chat):
    """Run ``specs`` on the engine and answer as one JSON body or as a stream."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    seqs = [server.engine.submit(spec, i, queue, loop) for i, spec in enumerate(specs)]
    head = {"id": f"{shape.prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": server.name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream(server, queue, seqs, head, shape, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        return await whole(server, request, queue, seqs, head, shape)
    finally:
        for seq in seqs:
            seq.cancelled = True


async def events(server: Server, queue: asyncio.Queue, count: int,
                 request: Request | None = None) -> AsyncIterator[Event | None]:
    """The sequences' events until each has ended; ``None`` after ``keepalive`` seconds
    without one (a keep-alive tick; also when the client of ``request`` went away)."""
    live = count
    while live:
        try:
            event = await asyncio.wait_for(queue.get(), timeout=server.keepalive)
        except TimeoutError:
            if request is not None and await request.is_disconnected():
                return
            yield None
            continue
        if event.kind != "text":
            live -= 1
        yield event


async def whole(server: Server, request: Request, queue: asyncio.Queue, seqs: list,
                head: dict, shape: Completions | Chat) -> JSONResponse:
    texts, logprobs = [b""] * len(seqs), [None] * len(seqs)
    finish, counts = [""] * len(seqs), [0] * len(seqs)
    offsets = [0] * len(seqs)
    async for event in events(server, queue, len(seqs), request):
        if event is None:
            continue
        i = event.index
        if event.kind == "error":
            raise ApiError(500, event.message, kind="server_error")
        if event.kind == "text":
            if seqs[i].spec.top_logprobs is not None:
                logprobs[i] = shape.merge(logprobs[i], shape.logprobs(list(event.units),
                                                                      offsets[i]))
            texts[i] += event.data
            offsets[i] = len(texts[i].decode("utf-8", errors="replace"))
        else:
            finish[i], counts[i] = event.finish_reason, event.completion_units
    choices = [shape.whole(i, texts[i].decode("utf-8", errors="replace"), logprobs[i],
                           finish[i]) for i in range(len(seqs))]
    return JSONResponse({**head, "object": shape.object, "choices": choices,
                         "usage": usage(server, prompt_units(seqs), sum(counts))})


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def stream(server: Server, queue: asyncio.Queue, seqs: list, head: dict,
                 shape: Completions | Chat, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in the chunk format of the ``openai`` client."""
    kind = shape.object + (".chunk" if isinstance(shape, Chat) else "")
    chunk = {**head, "object": kind}
    offsets, counts = [0] * len(seqs), 0
    try:
        for i in range(len(seqs)):
            first = shape.first(i)
            if first is not None:
                yield sse({**chunk, "choices": [first]})
        async for event in events(server, queue, len(seqs)):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            i = event.index
            if event.kind == "error":
                yield sse(error_body(event.message, "server_error"))
                return
            if event.kind == "text":
                text = event.data.decode("utf-8", errors="replace")
                logprobs = shape.logprobs(list(event.units), offsets[i]) \
                    if seqs[i].spec.top_logprobs is not None else None
                offsets[i] += len(text)
                yield sse({**chunk, "choices": [shape.choice(i, text, logprobs, None)]})
            else:
                counts += event.completion_units
                yield sse({**chunk, "choices": [shape.choice(i, "", None,
                                                              event.finish_reason)]})
        if include_usage:
            yield sse({**chunk, "choices": [],
                       "usage": usage(server, prompt_units(seqs), counts)})
        yield "data: [DONE]\n\n"
    finally:  # also when the client disconnects: its sequences free their slots
        for seq in seqs:
            seq.cancelled = True
