"""The playground (and its screenshot) in a real Chromium driven by Playwright.

The browser is the system's Chromium (``apt install chromium``; or ``UNTOK_CHROMIUM=PATH``).
Without one, or without the ``playwright`` package, these tests are skipped with a message;
with ``UNTOK_BROWSER_TESTS=required`` (as ``.ci/run`` sets) they fail instead.
``UNTOK_SCREENSHOTS=1`` writes the screenshots into ``docs/`` instead of a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from untok.config import resolve
from untok.data.ingest import ingest
from untok.models import build_model, load
from untok.train.trainer import train

DOCS = Path(__file__).resolve().parents[1] / "docs"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def unavailable(reason: str) -> None:
    if os.environ.get("UNTOK_BROWSER_TESTS") == "required":
        pytest.fail(f"browser tests are required here but {reason}")
    pytest.skip(reason)


def chromium_path() -> str:
    for candidate in (os.environ.get("UNTOK_CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    unavailable("no Chromium found: install it (apt install chromium) or set UNTOK_CHROMIUM")
    raise AssertionError  # unreachable: unavailable() skips or fails


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is missing (pip install 'untok[browser]')")
    executable = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.js_errors = errors  # a test that provokes an error response removes its report
    yield page
    page.close()
    assert errors == [], errors  # the page ran without a JavaScript error


def screenshot_path(tmp_path: Path, name: str) -> Path:
    return DOCS / name if os.environ.get("UNTOK_SCREENSHOTS") else tmp_path / name


@pytest.fixture(scope="module")
def shakespeare_model(tmp_path_factory):
    """A small flat model trained for a few seconds on Tiny Shakespeare."""
    from conftest import shakespeare

    root = tmp_path_factory.mktemp("browser")
    ingest([str(shakespeare())], root / "shakespeare", progress=False)
    config = resolve(preset_name="tiny", overrides=[
        "model.dim=64", "model.num_heads=4", "model.context=64", "train.batch_size=16",
        "train.lr=3e-3", "train.warmup_steps=10", "train.steps=150", "train.eval_every=1000",
        f"data.path={root / 'shakespeare'}"])
    train(config, root / "run", progress=False)
    return load(root / "run" / "last").eval()


@pytest.fixture(scope="module")
def playground(shakespeare_model):
    pytest.importorskip("fastapi", reason="untok serve needs the [serve] extra")
    from live_server import Running
    from untok.serve.app import create_app

    running = Running(create_app(shakespeare_model, "shakespeare"))
    yield running
    running.stop()


def open_playground(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('flat')")


def test_generate_colour_and_hover(page, playground, tmp_path):
    open_playground(page, playground.url)
    page.fill("#input", "ROMEO:\n")
    page.fill("#seed", "3")
    page.fill("#max_tokens", "160")
    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent === 'done'",
                           timeout=60_000)
    generated = page.locator("#output span.u:not(.prompt)")
    assert generated.count() > 20
    colours = set(generated.evaluate_all("spans => spans.map(s => s.style.background)"))
    assert len(colours) > 3  # coloured by probability, not one flat colour
    assert page.inner_text("#bpb").endswith("bits per byte")
    generated.nth(5).hover()
    tip = page.inner_text("#tip")
    assert "bits" in tip and "entropy" in tip and "%" in tip.splitlines()[-1]  # alternatives
    page.screenshot(path=str(screenshot_path(tmp_path, "playground.png")))


def test_stop_button(page, playground):
    open_playground(page, playground.url)
    page.fill("#input", "KING:")
    page.fill("#max_tokens", "4000")
    page.click("#go")
    page.wait_for_function("document.querySelectorAll('#output span.u:not(.prompt)').length > 3",
                           timeout=60_000)
    page.click("#stop-button")
    page.wait_for_function("document.getElementById('status').textContent === 'stopped'",
                           timeout=60_000)
    assert page.locator("#output span.u:not(.prompt)").count() < 4000


def test_score_mode_and_chat(page, playground):
    open_playground(page, playground.url)
    page.click("header nav button[data-mode=score]")
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    page.fill("#input", text)
    page.click("#go")
    page.wait_for_function("document.getElementById('bpb').textContent.includes('bits')")
    assert page.locator("#output span.u").count() == len(text)  # one span per character
    assert f"over {len(text)} bytes" in page.inner_text("#bpb")
    page.click("header nav button[data-mode=chat]")
    page.fill("#input", "Speak, speak.")
    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent === 'done'",
                           timeout=60_000)
    turns = page.locator("#transcript .turn")
    assert turns.count() == 2 and turns.nth(0).inner_text().endswith("Speak, speak.")


def test_blt_patch_boundaries(page, tmp_path):
    pytest.importorskip("fastapi", reason="untok serve needs the [serve] extra")
    from live_server import Running
    from untok.serve.app import create_app

    config = resolve(preset_name="blt-tiny", overrides=["model.patching.kind=fixed"]).model
    running = Running(create_app(build_model(config).eval(), "blt"))
    try:
        page.goto(running.url + "/?mode=score")
        page.wait_for_function("document.getElementById('model').textContent.includes('patch')")
        page.fill("#input", "abcdefghijklmnop")
        page.click("#go")
        page.wait_for_function("document.getElementById('bpb').textContent.includes('bits')")
        starts = page.locator("#output span.patch").evaluate_all(
            "spans => spans.map(s => s.textContent)")
        assert starts == ["a", "d", "h", "l", "p"]  # fixed(4) patches after BOS
    finally:
        running.stop()


def test_console_start_watch_stop_open(page, tmp_path, text_file):
    pytest.importorskip("fastapi", reason="untok serve needs the [serve] extra")
    from live_server import Running
    from untok.serve.app import create_app

    (tmp_path / "runs").mkdir()
    running = Running(create_app(None, "", runs=tmp_path / "runs"))
    try:
        page.goto(running.url + "/console")
        page.fill("#f-name", "books")
        page.fill("#f-preset", "no-such-preset")
        page.fill("#f-data", str(text_file))
        page.click("#f-start")
        page.wait_for_function("document.getElementById('form-error').textContent !== ''")
        assert "unknown preset" in page.inner_text("#form-error")
        page.js_errors[:] = [e for e in page.js_errors if "status of 400" not in e]
        page.fill("#f-preset", "tiny")
        page.fill("#f-steps", "100000")
        page.fill("#f-set", "train.eval_every=25\ntrain.log_every=5\ntrain.lr=3e-3")
        page.click("#f-start")
        page.wait_for_function("+(document.getElementById('c-bpb').dataset.points || 0) > 12",
                               timeout=120_000)  # the chart gains points as the run trains
        page.wait_for_function("document.querySelectorAll('#samples div').length > 0",
                               timeout=120_000)
        page.screenshot(path=str(screenshot_path(tmp_path, "console.png")))
        page.click("#stop")
        page.wait_for_function("document.querySelector('tr.run .status').textContent "
                               "=== 'stopped'", timeout=120_000)
        assert (tmp_path / "runs" / "books" / "last" / "model.safetensors").is_file()
        page.click("#open")
        page.wait_for_url(running.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('books')")
    finally:
        running.stop()
