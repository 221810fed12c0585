"""What the API answers: OpenAI-shaped errors, and the completion and chat responses,
whole (one JSON body) or streamed (server-sent events in the chunk format of the
``openai`` client), built from the engine's events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from untok.serve.engine import Event, Spec, Unit


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
                "text_offset": offsets,
                "bytes": [list(u.data) for u in units]}  # untok's: the exact bytes

    def choice(self, index: int, text: str, logprobs: dict | None, finish: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def first(self, index: int) -> dict | None:
        return None

    def whole(self, index: int, text: str, logprobs: dict | None, finish: str) -> dict:
        return self.choice(index, text, logprobs, finish)

    def merge(self, total: dict | None, part: dict) -> dict:
        if total is None:
            return part
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset", "bytes"):
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


def usage(server: Any, prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "unit": server.units.name}


async def respond(server: Any, request: Request, specs: list[Spec], shape: Completions | Chat,
                  streamed: bool = False, include_usage: bool = False):
    """Run ``specs`` on ``server.engine`` and answer as one JSON body or as a stream."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    seqs = [server.engine.submit(spec, i, queue, loop) for i, spec in enumerate(specs)]
    head = {"id": f"{shape.prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": server.name}
    if streamed:
        return StreamingResponse(stream(server, queue, seqs, head, shape, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        return await whole(server, request, queue, seqs, head, shape)
    finally:
        for seq in seqs:
            seq.cancelled = True


async def events(server: Any, queue: asyncio.Queue, count: int,
                 request: Request | None = None) -> AsyncIterator[list[Event]]:
    """The sequences' events until each has ended, in lists of whatever had arrived (a
    slow client gets fewer, larger pieces); an empty list after ``keepalive`` seconds
    without any (a keep-alive tick; the end when the client of ``request`` went away)."""
    live = count
    while live:
        try:
            arrived = [await asyncio.wait_for(queue.get(), timeout=server.keepalive)]
        except TimeoutError:
            if request is not None and await request.is_disconnected():
                return
            yield []
            continue
        while not queue.empty():
            arrived.append(queue.get_nowait())
        live -= sum(event.kind != "text" for event in arrived)
        yield arrived


def merged(arrived: list[Event]) -> list[Event]:
    """``arrived`` with each sequence's text events joined into one (before its end)."""
    by_sequence: dict[int, list[Event]] = {}
    for event in arrived:
        by_sequence.setdefault(event.index, []).append(event)
    out = []
    for index, mine in by_sequence.items():
        texts = [e for e in mine if e.kind == "text"]
        if texts:
            out.append(Event(index, "text", data=b"".join(e.data for e in texts),
                             units=tuple(u for e in texts for u in e.units)))
        out.extend(e for e in mine if e.kind != "text")
    return out


async def whole(server: Any, request: Request, queue: asyncio.Queue, seqs: list,
                head: dict, shape: Completions | Chat) -> JSONResponse:
    texts, logprobs = [b""] * len(seqs), [None] * len(seqs)
    finish, counts = [""] * len(seqs), [0] * len(seqs)
    async for arrived in events(server, queue, len(seqs), request):
        for event in merged(arrived):
            i = event.index
            if event.kind == "error":
                raise ApiError(500, event.message, kind="server_error")
            if event.kind == "text":
                if seqs[i].spec.top_logprobs is not None:
                    offset = len(texts[i].decode("utf-8", errors="replace"))
                    logprobs[i] = shape.merge(logprobs[i],
                                              shape.logprobs(list(event.units), offset))
                texts[i] += event.data
            else:
                finish[i], counts[i] = event.finish_reason, event.completion_units
    choices = [shape.whole(i, texts[i].decode("utf-8", errors="replace"), logprobs[i],
                           finish[i]) for i in range(len(seqs))]
    return JSONResponse({**head, "object": shape.object, "choices": choices,
                         "usage": usage(server, prompt_units(seqs), sum(counts))})


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def stream(server: Any, queue: asyncio.Queue, seqs: list, head: dict,
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
        async for arrived in events(server, queue, len(seqs)):
            if not arrived:
                yield ": keep-alive\n\n"
            for event in merged(arrived):
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
