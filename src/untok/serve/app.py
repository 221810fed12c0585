"""The OpenAI-compatible API: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``
and ``/health``, in the request and response shapes the official ``openai`` client sends
and parses (docs/serve.md); untok's own ``/v1/untok/score`` (per-byte surprise of a text)
and the browser playground at ``/``.

Tokens are the model's units: bytes for byte models, so ``max_tokens`` counts bytes and
``usage`` reports them (with ``"unit": "byte"``). untok's own sampler settings (``top_k``,
``sampler: "adaptive"``, ``low``, ``high``) ride as extra top-level fields, which the client
sends with ``extra_body``. Every error has the OpenAI shape ``{"error": {"message", "type",
"param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from torch import nn

from untok.chat import render
from untok.config import PRESETS
from untok.errors import UntokError
from untok.generate import SamplerConfig
from untok.models import capabilities, load
from untok.serve.console import RunForm, Runs
from untok.serve.engine import Engine, Spec
from untok.serve.responses import ApiError, Chat, Completions, respond
from untok.serve.score import MAX_SCORED_BYTES, score_text

MAX_STOPS = 4


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


class ScoreRequest(BaseModel):
    model: str
    text: str = Field(max_length=MAX_SCORED_BYTES)
    top_logprobs: int = Field(5, ge=0, le=20)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


# -- the application --------------------------------------------------------------------------

class Server:
    """What the endpoints share: the served model and its engine, the served name and the
    limits. The model can change while serving (the console opens a run's checkpoint), and
    a console-only server starts with none."""

    def __init__(self, model: nn.Module | None, name: str, max_prompt: int | None,
                 max_tokens: int, default_tokens: int, keepalive: float,
                 max_batch: int, device: torch.device | str = "cpu",
                 threads: int | None = None) -> None:
        self.asked_prompt, self.max_batch, self.threads = max_prompt, max_batch, threads
        self.device = next(model.parameters()).device if model is not None else device
        self.max_tokens, self.default_tokens = max_tokens, default_tokens
        self.keepalive = keepalive
        self.model: nn.Module | None = None
        self.engine: Engine | None = None
        if model is not None:
            self.serve(model, name)

    def serve(self, model: nn.Module, name: str) -> None:
        """Serve ``model`` as ``name`` from now on (requests under way on the model before
        end)."""
        previous = self.engine
        self.model, self.name, self.units = model, name, model.units
        self.engine = Engine(model, self.max_batch, self.threads)
        # a prompt is prefilled in one step, which the decoding caches hold at most
        self.max_prompt = min(self.asked_prompt or model.config.context, model.config.context)
        if previous is not None:
            previous.close()

    def check_model(self, name: str) -> None:
        if self.model is None:
            raise ApiError(503, "no model is being served: open a run's checkpoint in the "
                           "training console (/console)", "model", "model_not_loaded")
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


def streaming(body: Sampling) -> tuple[bool, bool]:
    """Whether to stream, and whether the stream ends with a usage chunk."""
    return body.stream, bool(body.stream and body.stream_options and
                             body.stream_options.include_usage)


def create_app(model: nn.Module | None, name: str, *, api_key: str | None = None,
               cors_origins: list[str] | tuple[str, ...] = (), max_prompt: int | None = None,
               max_tokens: int = 4096, default_tokens: int = 256,
               keepalive: float = 10.0, max_batch: int = 16,
               runs: str | Path | None = None, device: torch.device | str = "cpu",
               threads: int | None = None) -> FastAPI:
    """The FastAPI application serving ``model`` as ``name`` (see the module docstring;
    ``max_batch``: most sequences decoded as one batch; ``runs``: a folder of training runs
    for the console at ``/console``, which makes ``model`` optional; ``device``: where the
    console loads the checkpoints it opens when no model is given; ``threads``: the
    engine's compute threads, None: as many as the caller's)."""
    server = Server(model, name, max_prompt, max_tokens, default_tokens, keepalive,
                    max_batch, device, threads)
    console = Runs(runs) if runs is not None else None
    if model is None and console is None:
        raise UntokError("nothing to serve: give a checkpoint, or --runs DIR for the console")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if server.engine is not None:
            server.engine.close()
        if console is not None:
            await asyncio.to_thread(console.close)

    app = FastAPI(title="untok", lifespan=lifespan)
    app.state.server = server
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["*"], allow_headers=["*"])

    if api_key:
        app.add_middleware(RequireKey, key=api_key)

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

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> str:
        return page("playground.html")

    @app.get("/static/untok.css", include_in_schema=False)
    async def stylesheet() -> Response:
        return Response(page("untok.css"), media_type="text/css")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": server.model and server.name,
                "sequences": server.engine.busy() if server.engine else 0}

    @app.get("/v1/models")
    async def models() -> dict:
        served = server.model
        data = [] if served is None else [{
            "id": server.name, "object": "model", "created": int(time.time()),
            "owned_by": "untok", "family": served.config.family, "unit": served.units.name,
            "context": served.config.context, "patches": capabilities(served).patches}]
        return {"object": "list", "data": data, "console": console is not None}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        specs = [server.spec(body, prompt, body.max_tokens, choice, body.logprobs)
                 for prompt in server.completion_prompts(body) for choice in range(body.n)]
        return await respond(server, request, specs, Completions(), *streaming(body))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        server.check_model(body.model)
        prompt = server.chat_prompt(body)
        limit = body.max_completion_tokens if body.max_completion_tokens is not None \
            else body.max_tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        specs = [server.spec(body, prompt, limit, choice, top) for choice in range(body.n)]
        return await respond(server, request, specs, Chat(), *streaming(body))

    @app.post("/v1/untok/score")
    async def score(body: ScoreRequest) -> dict:
        server.check_model(body.model)
        data = body.text.encode("utf-8", errors="surrogatepass")
        if len(data) > MAX_SCORED_BYTES:
            raise ApiError(400, f"the text is {len(data)} bytes; score at most "
                           f"{MAX_SCORED_BYTES} at a time", "text")
        # on the engine's thread, between two decoding rounds (see untok.serve.engine)
        return await asyncio.wrap_future(
            server.engine.call(score_text, server.model, data, body.top_logprobs))

    if console is not None:
        add_console(app, server, console)
    return app


class RequireKey:
    """ASGI middleware: requests under ``/v1`` (but CORS preflights) need ``Authorization:
    Bearer KEY``. Plain ASGI rather than ``@app.middleware``, which routes every streamed
    chunk through extra tasks and queues."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") \
                and scope["method"] != "OPTIONS" \
                and dict(scope["headers"]).get(b"authorization") != self.expected:
            response = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer "
                                "<key>' with the key the server was started with", None,
                                "invalid_api_key").response()
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def page(name: str) -> str:
    """One of the package's pages or stylesheets (``serve/static``)."""
    return resources.files("untok.serve").joinpath(f"static/{name}").read_text()


class RunRequest(BaseModel):
    name: str
    data: str
    preset: str | None = None
    recipe: str | None = None
    steps: int | None = Field(None, gt=0)
    minutes: float | None = Field(None, gt=0)
    overrides: list[str] = []


class ResumeRequest(BaseModel):
    steps: int | None = Field(None, gt=0)
    minutes: float | None = Field(None, gt=0)


def add_console(app: FastAPI, server: Server, runs: Runs) -> None:
    """The training console: its page at ``/console`` and its API under ``/console/api``
    (every error a one-line message in the OpenAI error shape)."""

    async def call(work, *args):
        try:
            return await asyncio.to_thread(work, *args)
        except UntokError as exc:
            raise ApiError(400, str(exc)) from None

    @app.get("/console", response_class=HTMLResponse, include_in_schema=False)
    async def console_page() -> str:
        return page("console.html")

    @app.get("/console/api/runs")
    async def list_runs() -> dict:
        return {"root": str(runs.root), "runs": await call(runs.list),
                "serving": server.model and server.name, "presets": sorted(PRESETS)}

    @app.get("/console/api/runs/{name}/metrics")
    async def metrics(name: str, after: int = 0) -> dict:
        return {"records": await call(runs.records, name, after)}

    @app.post("/console/api/runs")
    async def start(body: RunRequest) -> dict:
        return await call(runs.start, RunForm(**body.model_dump()))

    @app.post("/console/api/runs/{name}/stop")
    async def stop(name: str) -> dict:
        return await call(runs.stop, name)

    @app.post("/console/api/runs/{name}/resume")
    async def resume(name: str, body: ResumeRequest) -> dict:
        return await call(runs.resume, name, body.steps, body.minutes)

    @app.post("/console/api/runs/{name}/open")
    async def open_run(name: str) -> dict:
        def load_best():
            checkpoint = runs.folder(name) / "best"
            if not checkpoint.is_dir():
                raise UntokError(f"run '{name}' has no best checkpoint yet")
            server.serve(load(checkpoint, server.device).eval(), name)
            return {"model": name}
        return await call(load_best)
