"""The training console's API (untok serve --runs DIR): runs listed from their metrics,
training started, stopped (with a checkpoint), resumed and opened in the playground."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("fastapi", reason="untok serve needs the [serve] extra")
from live_server import Running  # noqa: E402
from untok.errors import UntokError  # noqa: E402
from untok.serve.app import create_app  # noqa: E402
from untok.serve.console import Runs  # noqa: E402


def call(running, path, body=None):
    method = "GET" if body is None else "POST"
    response = running.http(method, path, None if body is None else json.dumps(body).encode(),
                            {"Content-Type": "application/json"})
    try:
        return response.status, json.loads(response.read())
    finally:
        response.close()


def wait_for(condition, timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture
def console(tmp_path):
    (tmp_path / "runs").mkdir()
    running = Running(create_app(None, "", runs=tmp_path / "runs"))
    yield running
    running.stop()


def test_bad_forms_are_one_line_errors(console, text_file):
    good = {"name": "r", "data": str(text_file), "preset": "tiny", "steps": 5}
    for change, message in [
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"data": "/no/such/file"}, "data not found"),
        ({"name": "../escape"}, "run name"),
        ({"steps": None}, "give a budget"),
        ({"overrides": ["model.dim=banana"]}, "model.dim"),
        ({"recipe": "x.toml"}, "a preset or a recipe"),
    ]:
        status, body = call(console, "/console/api/runs", {**good, **change})
        assert status == 400 and message in body["error"]["message"], (change, body)
        assert "\n" not in body["error"]["message"]
    assert call(console, "/console/api/runs")[1]["runs"] == []  # nothing was started
    status, body = call(console, "/v1/completions", {"model": "x", "prompt": "a"})
    assert status == 503 and "training console" in body["error"]["message"]


def test_start_stop_resume_open(console, text_file, tmp_path):
    status, _ = call(console, "/console/api/runs", {
        "name": "books", "data": str(text_file), "preset": "tiny", "steps": 100000,
        "overrides": ["train.eval_every=20", "train.log_every=5"]})
    assert status == 200

    def run():
        return call(console, "/console/api/runs")[1]["runs"][0]

    assert run()["status"] in ("starting", "running") and run()["controllable"]
    wait_for(lambda: run()["best_val_bpb"] is not None)
    records = call(console, "/console/api/runs/books/metrics")[1]["records"]
    assert records[0]["event"] == "start" and any("loss_bpb" in r for r in records)
    later = call(console, f"/console/api/runs/books/metrics?after={len(records)}")[1]
    assert all(r not in records[:1] for r in later["records"])  # only what is new
    assert call(console, "/console/api/runs/books/stop", {})[0] == 200
    wait_for(lambda: run()["status"] == "stopped")
    stopped = run()
    assert (tmp_path / "runs" / "books" / "last" / "model.safetensors").is_file()
    status, body = call(console, "/console/api/runs/books/stop", {})
    assert status == 400 and "not running" in body["error"]["message"]

    assert call(console, "/console/api/runs/books/resume", {"steps": 5})[0] == 200
    wait_for(lambda: run()["status"] in ("finished", "stopped") and
             run()["records"] > stopped["records"])
    records = call(console, "/console/api/runs/books/metrics")[1]["records"]
    assert [r["event"] for r in records if r.get("event") == "start"] == ["start", "start"]

    assert call(console, "/console/api/runs/books/open", {})[0] == 200
    models = call(console, "/v1/models")[1]
    assert models["data"][0]["id"] == "books" and models["console"] is True
    status, body = call(console, "/v1/completions", {"model": "books", "prompt": "a",
                                                     "max_tokens": 4})
    assert status == 200 and body["choices"][0]["text"] is not None


def test_runs_started_elsewhere_are_listed(tmp_path, text_file):
    from untok.cli import main

    (tmp_path / "runs").mkdir()
    assert main(["train", "--preset", "tiny", "--data", str(text_file), "--steps", "3",
                 "--out", str(tmp_path / "runs" / "cli-run"), "--quiet"]) == 0
    [run] = Runs(tmp_path / "runs").list()
    assert run["status"] == "finished" and run["preset"] == "flat 32x2"
    assert run["steps"] == 3 and not run["controllable"]
    with pytest.raises(UntokError, match="runs folder not found"):
        Runs(tmp_path / "missing")


def test_serve_needs_a_checkpoint_or_runs(capsys):
    from untok.cli import main

    assert main(["serve"]) != 0
    assert "--runs DIR" in capsys.readouterr().err
