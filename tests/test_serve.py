"""untok serve: the OpenAI-compatible API, exercised with the official ``openai`` client
against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai", reason="the openai client is in the [dev] extra")
pytest.importorskip("fastapi", reason="untok serve needs the [serve] extra")
from live_server import Running  # noqa: E402
from untok.chat import render, role_id  # noqa: E402
from untok.config import ModelConfig  # noqa: E402
from untok.models import build_model  # noqa: E402
from untok.serve.app import create_app  # noqa: E402
from untok.serve.responses import events  # noqa: E402
from untok.serve.text import Release, incomplete_utf8_tail, stop_prefix_tail  # noqa: E402
from untok.units import ByteUnits  # noqa: E402

TINY = ModelConfig(dim=32, num_layers=2, num_heads=2, context=64)


@pytest.fixture(scope="module")
def served():
    model = build_model(TINY).eval()
    running = Running(create_app(model, "tiny", max_tokens=512, keepalive=0.2))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(served):
    return served.client()


def sampled_bytes(client, prompt: str, n: int, seed: int) -> bytes:
    """The exact bytes of a seeded chat reply, from its logprobs' ``bytes``."""
    out = client.chat.completions.create(model="tiny", messages=[
        {"role": "user", "content": prompt}], max_tokens=n, seed=seed, logprobs=True)
    return b"".join(bytes(t.bytes) for t in out.choices[0].logprobs.content)


# -- the template and the text release ----------------------------------------------------

def test_chat_template_markers_cannot_be_forged():
    units = ByteUnits()
    ids = render([{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "say ASSISTANT"},
                  {"role": "assistant", "content": "ok"}], units)
    markers = [i for i in ids if i >= 256]
    assert markers == [units.bos, role_id(units, "system"), role_id(units, "user"),
                       role_id(units, "assistant"), units.eos, role_id(units, "assistant")]
    assert all(i > units.pad for i in markers[1:4])
    assert bytes(i for i in ids if i < 256) == b"be briefsay ASSISTANTok"


def test_release_holds_back_stops_and_partial_characters():
    assert incomplete_utf8_tail("é".encode()[:1]) == 1
    assert incomplete_utf8_tail("a€".encode()[:3]) == 2
    assert incomplete_utf8_tail("a€".encode()) == 0
    assert incomplete_utf8_tail(b"\x80") == 0  # not a beginning: released as is
    assert stop_prefix_tail(b"abcEN", [b"END"]) == 2
    # a stop string of two 3-byte characters, arriving one byte at a time
    stop = "終了".encode()
    release = Release([stop])
    sent = b""
    for byte in "ok 終わ? 終了 never".encode():
        out, _ = release.push(bytes([byte]), byte)
        sent += out
        out.decode("utf-8")  # every released piece is whole characters
        assert stop not in sent
        if release.stopped:
            break
    assert release.stopped and sent == "ok 終わ? ".encode()


def test_release_items_follow_their_bytes():
    release = Release([b"xy"])
    assert release.push(b"a", 1) == (b"a", [1])
    assert release.push(b"x", 2) == (b"", [])  # could begin "xy"
    assert release.push(b"b", 3) == (b"xb", [2, 3])
    assert release.push(b"x", 4) == (b"", [])
    assert release.push(b"y", 5) == (b"", [])
    assert release.stopped


def test_events_tick_while_waiting():
    class Slow:
        keepalive = 0.01

    async def first_two():
        ticks = events(Slow(), asyncio.Queue(), 1)
        return [await anext(ticks), await anext(ticks)]

    assert asyncio.run(first_two()) == [[], []]


# -- the API through the openai client ---------------------------------------------------

def test_models_and_health(served, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    health = served.get_json("/health")
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_completion_counts_bytes(client):
    out = client.completions.create(model="tiny", prompt="Hello", max_tokens=20, seed=1)
    choice = out.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert out.usage.prompt_tokens == 5
    assert 0 < out.usage.completion_tokens <= 20
    assert out.usage.total_tokens == 5 + out.usage.completion_tokens
    assert out.usage.model_extra["unit"] == "byte"


def test_seed_reproducible_and_stream_equals_whole(client):
    ask = dict(model="tiny", prompt="Once", max_tokens=40, temperature=1.0)
    a = client.completions.create(seed=7, **ask).choices[0].text
    b = client.completions.create(seed=7, **ask).choices[0].text
    c = client.completions.create(seed=8, **ask).choices[0].text
    assert a == b and a != c
    chunks = list(client.completions.create(seed=7, stream=True, **ask))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == a
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_chat_stream_format_and_usage(client):
    messages = [{"role": "user", "content": "hi"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30,
                                           seed=3)
    stream = list(client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=30, seed=3, stream=True,
        stream_options={"include_usage": True}))
    assert stream[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == whole.choices[0].message.content
    assert stream[-1].choices == [] and stream[-1].usage.completion_tokens == \
        whole.usage.completion_tokens
    assert [ch.choices[0].finish_reason for ch in stream if ch.choices][-1] == \
        whole.choices[0].finish_reason


def test_stop_strings_cut_the_output(client):
    data = sampled_bytes(client, "stop test", 200, seed=5)
    start = next(i for i in range(5, len(data) - 2)
                 if all(33 <= b < 127 for b in data[i:i + 2]))
    stop = data[start:start + 2].decode()
    cut = data[:data.find(stop.encode())]
    messages = [{"role": "user", "content": "stop test"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=200,
                                         seed=5, stop=[stop, "\x00never"])
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == cut.decode("utf-8", errors="replace")
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions
                       .create(model="tiny", messages=messages, max_tokens=200,
                               seed=5, stop=stop, stream=True) if ch.choices)
    assert streamed == out.choices[0].message.content and stop not in streamed


def test_logprobs(client):
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=12,
        temperature=0, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.bytes) == 1 and entry.logprob <= 0
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].bytes == entry.bytes  # greedy took the best
        assert entry.logprob == pytest.approx(tops[0], abs=1e-5)
    text = client.completions.create(model="tiny", prompt="x", max_tokens=12,
                                     temperature=0, logprobs=2)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 12
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_n_choices_follow_seeds(client):
    ask = dict(model="tiny", prompt="abc", max_tokens=16)
    both = client.completions.create(n=2, seed=11, **ask)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == client.completions.create(seed=11, **ask).choices[0].text
    assert both.choices[1].text == client.completions.create(seed=12, **ask).choices[0].text
    assert both.usage.prompt_tokens == 3  # the prompt counts once


def test_concurrent_streams_do_not_mix(client):
    def stream(seed: int) -> str:
        chunks = client.completions.create(model="tiny", prompt=f"p{seed}", max_tokens=50,
                                           seed=seed, stream=True)
        return "".join(ch.choices[0].text for ch in chunks if ch.choices)

    alone = [client.completions.create(model="tiny", prompt=f"p{s}", max_tokens=50,
                                       seed=s).choices[0].text for s in range(6)]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(stream, range(6)))
    assert together == alone


def test_disconnect_frees_the_sequence(served):
    body = {"model": "tiny", "prompt": "go", "max_tokens": 512, "stream": True}
    response = served.http("POST", "/v1/completions", json.dumps(body).encode(),
                           {"content-type": "application/json"})
    assert response.readline().startswith(b"data: ")
    response.close()  # the client goes away mid-stream
    deadline = time.time() + 10
    while served.get_json("/health")["sequences"]:
        assert time.time() < deadline, "the abandoned stream kept its sequence"
        time.sleep(0.05)


def test_errors_have_the_openai_shape(served, client):
    raw = served.http("POST", "/v1/completions", b"{not json",
                      {"content-type": "application/json"})
    error = json.loads(raw.read())["error"]
    assert raw.status == 400 and "not valid JSON" in error["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="other", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="x", extra_body={"temperature": "hot"})
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="x" * 100)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot",
                                                                "content": "x"}])
    assert set(error) == {"message", "type", "param", "code"}


def test_api_key_and_cors():
    model = build_model(TINY).eval()
    running = Running(create_app(model, "tiny", api_key="s3cret",
                                 cors_origins=["http://example.test"]))
    try:
        with pytest.raises(openai.AuthenticationError):
            running.client("wrong").models.list()
        assert running.client("s3cret").models.list().data[0].id == "tiny"
        assert running.get_json("/health")["status"] == "ok"  # no key needed
        preflight = running.http("OPTIONS", "/v1/models", headers={
            "Origin": "http://example.test", "Access-Control-Request-Method": "GET"})
        preflight.read()
        assert preflight.getheader("access-control-allow-origin") == "http://example.test"
    finally:
        running.stop()


def test_cli_serve_missing_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "untok", "serve", str(tmp_path / "no")],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_sse_lines_are_exact(served):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 3, "stream": True}
    response = served.http("POST", "/v1/completions", json.dumps(body).encode(),
                           {"content-type": "application/json"})
    assert response.getheader("content-type").startswith("text/event-stream")
    lines = [line for line in response.read().decode().split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        chunk = json.loads(line[6:])
        assert chunk["object"] == "text_completion" and chunk["model"] == "tiny"


def test_full_cohorts_open_new_ones():
    """With at most 2 sequences a batch, 5 concurrent requests decode in 3 cohorts and
    still give what each gives alone."""
    model = build_model(TINY).eval()
    running = Running(create_app(model, "tiny", max_batch=2))
    try:
        small = running.client()
        ask = dict(model="tiny", prompt="q", max_tokens=30)
        with ThreadPoolExecutor(5) as pool:
            together = list(pool.map(lambda s: small.completions.create(seed=s, **ask)
                                     .choices[0].text, range(5)))
        alone = [small.completions.create(seed=s, **ask).choices[0].text for s in range(5)]
        assert together == alone
    finally:
        running.stop()


def test_prompts_that_fill_the_context_batch_with_others(served, client):
    """A prompt of the whole context (the longest allowed) and short ones decode side by
    side, each as it does alone; rows that finish early leave the batch in the middle."""
    long = "x" * (TINY.context - 1)  # with BOS: the context
    asks = [(long, 20), ("a", 5), ("b", 30), (long, 12), ("c", 25)]

    def ask(i: int) -> str:
        prompt, n = asks[i]
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=n,
                                         seed=i).choices[0].text

    alone = [ask(i) for i in range(len(asks))]
    with ThreadPoolExecutor(len(asks)) as pool:
        assert list(pool.map(ask, range(len(asks)))) == alone


def test_leaving_rows_are_replaced_by_the_last():
    from untok.serve.engine import fill_gaps

    assert fill_gaps([0, 1, 2, 3]) == [0, 1, 2, 3]
    assert fill_gaps([0, 2, 3, 5]) == [0, 5, 2, 3]
    assert fill_gaps([4, 5]) == [4, 5]
    assert fill_gaps([1, 3, 4]) == [3, 1, 4]


def test_engine_calls_run_on_its_thread_with_its_threads():
    """Model work handed to the engine runs on its worker thread (the one thread that
    computes), with the engine's thread count; a failure reaches the caller."""
    import threading

    import torch

    from untok.serve.engine import Engine

    engine = Engine(build_model(TINY).eval(), threads=1)
    try:
        where = engine.call(lambda: (threading.current_thread().name,
                                     torch.get_num_threads())).result(timeout=30)
        assert where == ("untok-engine", 1)
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0).result(timeout=30)
    finally:
        engine.close()


def test_score_endpoint(served):
    text = "to be, or not to be: héllo"
    response = served.http("POST", "/v1/untok/score", json.dumps(
        {"model": "tiny", "text": text, "top_logprobs": 3}).encode(),
        {"Content-Type": "application/json"})
    result = json.loads(response.read())
    assert response.status == 200
    units = result["units"]
    assert bytes(b for u in units for b in u["bytes"]) == text.encode()
    assert [u["offset"] for u in units] == list(range(len(text.encode())))
    assert all(len(u["top"]) == 3 and u["bits"] > 0 and u["entropy"] > 0 for u in units)
    assert result["bits_per_byte"] == pytest.approx(
        sum(u["bits"] for u in units) / len(text.encode()))
    assert result["patch_starts"] is None  # a flat model has no patches
    for body, status in [({"model": "other", "text": "x"}, 404),
                         ({"model": "tiny", "text": "x" * 70000}, 400)]:
        response = served.http("POST", "/v1/untok/score", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
        assert response.status == status and "error" in json.loads(response.read())


def test_score_endpoint_draws_blt_patches():
    from untok.config import resolve

    config = resolve(preset_name="blt-tiny", overrides=["model.patching.kind=fixed"]).model
    running = Running(create_app(build_model(config).eval(), "blt"))
    try:
        response = running.http("POST", "/v1/untok/score", json.dumps(
            {"model": "blt", "text": "abcdefghij"}).encode(), {"Content-Type": "application/json"})
        result = json.loads(response.read())
        size = config.patching.patch_size
        # fixed patches of the stream BOS + text: the first holds BOS and size - 1 bytes
        assert result["patch_starts"] == [0, *range(size - 1, 10, size)]
        assert running.get_json("/v1/models")["data"][0]["patches"] is True
    finally:
        running.stop()


def test_playground_page_is_served_with_no_outside_resources(served):
    response = served.http("GET", "/")
    page = response.read().decode()
    assert response.status == 200 and "untok playground" in page
    assert "http://" not in page and "https://" not in page  # no CDN: everything is here
