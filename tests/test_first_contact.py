"""What a new user meets first: the quick start, honest run endings, one-line errors, one
overwrite policy, held-out evaluation. One test (or more) per item of the first-contact
report, at the level where the user met it (mostly the CLI)."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from untok.cli import main
from untok.config import resolve
from untok.data.ingest import ingest
from untok.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("untok: error: "), err
    for word in words:
        assert word in lines[0], err


def tiny_run(capsys, data, out, *extra, steps=3):
    code, stdout, err = run(capsys, "train", "--data", data, "--preset", "tiny", "--steps",
                            steps, "--out", out, "--quiet", *extra)
    assert code == 0, err
    return out


def strict_json(line):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


# 1. the README's first command ----------------------------------------------------------

def test_make_installs_core_without_an_empty_extras_list():
    """pip 26 rejects `-e ".[]"`; the core install must name the project alone (the CI
    script runs `make demo` in a fresh venv to prove the whole quick start)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    lines = subprocess.run(["make", "-n", "-B", "demo", "VENV=/nonexistent-venv"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    installs = [line for line in lines if "pip install -q -e" in line]
    assert installs and all(".[]" not in line for line in installs)
    assert installs[-1].endswith('-e "."')
    assert "make demo VENV=.venv-demo" in (ROOT / ".ci" / "run").read_text()


# 2. a diverged run ------------------------------------------------------------------------

def test_a_diverged_run_says_so_and_fails(capsys, tmp_path, text_file):
    out = tmp_path / "q1"
    code, stdout, err = run(capsys, "train", "--data", text_file, "--preset", "tiny",
                            "--steps", 50, "--set", "train.lr=1e9", "--out", out, "--quiet")
    one_line_error(code, err, "diverged", "no checkpoint was written", "train.lr")
    assert "checkpoints:" not in stdout
    assert not (out / "best").exists() and not (out / "last").exists()
    records = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["reason"] == "diverged"  # and every line parsed as strict JSON


# 3. tracebacks ---------------------------------------------------------------------------

def test_entropies_of_a_matmul_free_model_is_a_clear_error(capsys, tmp_path, text_file):
    store = ingest([str(text_file)], tmp_path / "s", progress=False)
    ckpt = tiny_run(capsys, store.paths["bin"].with_suffix(""), tmp_path / "mm", "--set",
                    "model.backbone='mmfree'")
    code, _, err = run(capsys, "data", "entropies", tmp_path / "s", "-m", ckpt / "best")
    one_line_error(code, err, "must be a flat byte transformer", "mmfree", "entropy-small")
    assert not list(tmp_path.glob("*.tmp*"))


def test_entropies_leave_no_temporary_file_when_they_fail(tmp_path, text_file, monkeypatch):
    from untok.data import entropies

    store = ingest([str(text_file)], tmp_path / "s", progress=False)
    ckpt = train(resolve(preset_name="tiny", overrides=[
        f"data.path={str(text_file)!r}", "train.steps=2"]), tmp_path / "e", progress=False)

    def broken(*_args, **_kwargs):
        yield from ()
        raise OSError("disk full")

    monkeypatch.setattr(entropies, "iter_entropies", broken)
    with pytest.raises(OSError):
        entropies.compute_entropies(store, ckpt.out / "best", progress=False)
    assert not list(tmp_path.glob("s.entropy*"))


def test_a_recipe_that_is_a_directory(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--recipe", tmp_path, "--steps", 1)
    one_line_error(code, err, "is a directory")


# 4. resume from anywhere ------------------------------------------------------------------

def test_resume_from_another_directory_and_with_moved_data(capsys, tmp_path, text_file,
                                                           monkeypatch):
    first, elsewhere = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    elsewhere.mkdir()
    shutil.copy(text_file, first / "book.txt")
    monkeypatch.chdir(first)
    tiny_run(capsys, "book.txt", "run", steps=2)  # a relative data path
    monkeypatch.chdir(elsewhere)
    code, out, err = run(capsys, "train", "--resume", first / "run" / "last", "--steps", 4,
                         "--quiet")
    assert code == 0 and "4 steps" in out, err

    moved = elsewhere / "moved.txt"
    (first / "book.txt").rename(moved)
    code, _, err = run(capsys, "train", "--resume", first / "run" / "last", "--steps", 6,
                       "--quiet")
    one_line_error(code, err, "--data")
    code, out, err = run(capsys, "train", "--resume", first / "run" / "last", "--steps", 6,
                         "--data", moved, "--quiet")
    assert code == 0 and "6 steps" in out, err
    other = elsewhere / "other.txt"
    other.write_bytes(moved.read_bytes()[::-1])
    code, _, err = run(capsys, "train", "--resume", first / "run" / "last", "--steps", 8,
                       "--data", other, "--quiet")
    one_line_error(code, err, "different data")


# 5. MFU against a stale peak --------------------------------------------------------------

def test_mfu_never_uses_a_stale_low_peak(tmp_path, text_file, monkeypatch):
    import torch

    from untok.hardware import peak_key

    monkeypatch.setenv("UNTOK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    stale = {peak_key(torch.device("cpu")): 1.0}  # measured while the machine was crowded
    (tmp_path / "cache" / "matmul_peak.json").write_text(json.dumps(stale))
    result = train(resolve(preset_name="tiny", overrides=[
        f"data.path={str(text_file)!r}", "train.steps=20", "train.device='cpu'"]),
        tmp_path / "r", progress=False)
    records = [json.loads(line) for line in (result.out / "metrics.jsonl").open()]
    mfus = [r["mfu"] for r in records if "mfu" in r]
    assert mfus and max(mfus) <= 1.0
    cached = json.loads((tmp_path / "cache" / "matmul_peak.json").read_text())
    assert cached[peak_key(torch.device("cpu"))] > 1e6  # the cache was raised


# 6. interrupted runs exit 130: tests/test_train.py::test_a_signal_saves_a_checkpoint_...

# 7. one overwrite policy ------------------------------------------------------------------

def test_ingest_refuses_to_replace_a_store_without_force(capsys, tmp_path, text_file):
    out = tmp_path / "books"
    assert run(capsys, "data", "ingest", text_file, "-o", out, "--quiet")[0] == 0
    before = (tmp_path / "books.meta.json").read_text()
    code, _, err = run(capsys, "data", "ingest", text_file, text_file, "-o", out, "--quiet")
    one_line_error(code, err, "already exists", "--force")
    assert (tmp_path / "books.meta.json").read_text() == before
    code, out_text, _ = run(capsys, "data", "ingest", text_file, text_file, "-o", out,
                            "--quiet", "--force")
    assert code == 0 and "2 documents" in out_text


def test_ingest_does_not_create_missing_folders(capsys, tmp_path, text_file):
    code, _, err = run(capsys, "data", "ingest", text_file, "-o", tmp_path / "no" / "dir" / "x",
                       "--quiet")
    one_line_error(code, err, "does not exist")
    assert not (tmp_path / "no").exists()


def test_demo_refuses_to_replace_a_run_without_force(capsys, tmp_path):
    (tmp_path / "demo" / "last").mkdir(parents=True)
    code, _, err = run(capsys, "demo", "--out", tmp_path / "demo", "--minutes", 0.1)
    one_line_error(code, err, "already holds a demo run", "--force")


def test_every_command_that_writes_takes_the_same_force_switch():
    from untok.cli import build_parser

    parser = build_parser()
    commands = {"demo": [], "train": [], "data ingest": ["x", "-o", "y"],
                "export": ["c", "-o", "d"], "compress": ["f", "-m", "m"],
                "decompress": ["f", "-m", "m"]}
    for command, rest in commands.items():
        for switch in ("-f", "--force", "--overwrite"):
            args = parser.parse_args([*command.split(), *rest, switch])
            assert args.force, (command, switch)


# 8. val splits that represent every document, and empty splits at ingest ------------------

def test_a_few_documents_each_give_their_tail_to_val(capsys, tmp_path, text_file):
    folder = tmp_path / "langs"
    folder.mkdir()
    data = text_file.read_bytes()
    for i in range(18):
        (folder / f"l{i:02d}.txt").write_bytes(data[i * 1000:(i + 1) * 1000])
    code, out, err = run(capsys, "data", "ingest", folder, "-o", tmp_path / "s", "--quiet")
    assert code == 0 and "tails split" in out, err
    run_dir = tiny_run(capsys, tmp_path / "s", tmp_path / "r", steps=2)
    code, out, _ = run(capsys, "eval", run_dir / "best", "--data", tmp_path / "s",
                       "--per-file", "--json")
    per_file = json.loads(out)["per_file"]
    assert len(per_file) == 18 and all(row["bytes"] == 100 for row in per_file)


def test_an_empty_val_split_is_refused_at_ingest(capsys, tmp_path, text_file):
    code, _, err = run(capsys, "data", "ingest", text_file, "-o", tmp_path / "s", "--split",
                       "document", "--quiet")
    one_line_error(code, err, "leaves the val split empty", "--split tail")
    assert not list(tmp_path.glob("s.*"))


# 9. budgets include the final evaluation --------------------------------------------------

def test_a_time_budget_includes_the_final_evaluation(tmp_path):
    from conftest import shakespeare

    text = tmp_path / "t.txt"
    text.write_bytes(shakespeare().read_bytes()[:300000])
    minutes = 0.3
    started = time.perf_counter()
    result = train(resolve(preset_name="tiny", overrides=[
        f"data.path={str(text)!r}", "data.val_fraction=0.5", f"train.minutes={minutes}",
        "model.dim=64", "model.context=128", "train.batch_size=8", "train.eval_every=20",
        "train.eval_bytes=60000"]), tmp_path / "r", progress=False)
    wall = time.perf_counter() - started
    evals = [json.loads(line) for line in (result.out / "metrics.jsonl").open()
             if '"eval"' in line]
    final = evals[-1]["eval_seconds"]
    # without a reserve the run would end one final evaluation past its budget
    assert wall <= 60 * minutes + 0.5 * final + 1.0, \
        f"{wall:.1f} s for a {60 * minutes:.0f} s budget (an evaluation takes {final:.1f} s)"


# 10. the demo's verdict -------------------------------------------------------------------

def test_the_demo_verdict_names_winners_losers_and_the_budget_to_change_it(monkeypatch):
    from untok import demo

    monkeypatch.setattr(demo, "MEASURED_CURVE", {3.0: 1.9, 10.0: 1.6, 30.0: 1.4})
    figures = {"gzip -9": 1.70, "bzip2 -9": 1.45, "xz -9e": 1.54, "xz -9e given train": 1.34}
    lines = demo.verdict(1.65, figures)
    assert lines[0].startswith("verdict: untok (1.650 bpb) beats gzip -9 but not bzip2 -9, "
                               "xz -9e and xz -9e given train")
    assert "make demo MINUTES=30" in lines[1]  # bzip2: 1.4 < 1.45 first at 30 minutes
    assert "not passed within the 30 minutes" in lines[3] and "1.400 bpb then" in lines[3]
    assert demo.verdict(1.2, figures)[0].startswith("verdict: untok (1.200 bpb) beats every")


def test_the_demo_curve_is_the_measured_one():
    from untok import demo

    results = ROOT / "bench" / "results" / "demo.json"
    if not results.is_file():
        pytest.skip("bench/results/demo.json not written yet (python bench/demo.py)")
    curve = json.loads(results.read_text())["figures"]["curve"]
    assert {p["minutes"]: round(p["val_bpb"], 3)
                                   for p in curve["points"]} == demo.MEASURED_CURVE


# 11. confusing messages -------------------------------------------------------------------

def test_export_of_an_exported_model(capsys, tmp_path, text_file):
    ckpt = tiny_run(capsys, text_file, tmp_path / "mm", "--preset", "mmfree-tiny")
    assert run(capsys, "export", ckpt / "best", "--ternary", "-o", tmp_path / "x")[0] == 0
    code, _, err = run(capsys, "export", tmp_path / "x", "--ternary", "-o", tmp_path / "y")
    one_line_error(code, err, "already exported")


def test_data_info_on_a_run_folder(capsys, tmp_path, text_file):
    ckpt = tiny_run(capsys, text_file, tmp_path / "r")
    for folder in (ckpt, ckpt / "best"):
        code, _, err = run(capsys, "data", "info", folder)
        one_line_error(code, err, "is an untok training run or checkpoint, not data")


def test_a_store_file_names_its_store(capsys, tmp_path, text_file):
    store = ingest([str(text_file)], tmp_path / "ml", progress=False)
    for name in ("ml.bin", "ml.idx", "ml.meta.json"):
        code, out, err = run(capsys, "data", "info", tmp_path / name, "--json")
        assert code == 0, err
        info = json.loads(out)
        assert info["name"] == "ml" and info["documents"] == store.num_docs == 1
    cached = Path(os.environ["UNTOK_CACHE"]) / "stores"
    assert not list(cached.glob("ml.*"))  # nothing ingested anew


def test_an_option_error_prints_nothing_before_it(capsys, tmp_path, text_file):
    ckpt = tiny_run(capsys, text_file, tmp_path / "r")
    code, out, err = run(capsys, "generate", ckpt, "--prompt", "hi", "--top-p", 2)
    one_line_error(code, err, "--top-p")
    assert out == ""


def test_compressing_an_empty_file_reports_no_rate(capsys, tmp_path, text_file):
    ckpt = tiny_run(capsys, text_file, tmp_path / "r")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "compress", empty, "-m", ckpt)
    assert code == 0 and "empty input" in err and "bits per byte" not in err
    assert run(capsys, "decompress", tmp_path / "empty.txt.utk", "-m", ckpt, "-o",
               tmp_path / "back")[0] == 0
    assert (tmp_path / "back").read_bytes() == b""


def test_blt_options_on_a_flat_model_are_an_error(capsys, tmp_path, text_file):
    code, _, err = run(capsys, "train", "--data", text_file, "--preset", "tiny", "--steps", 1,
                       "--patching", "entropy", "--out", tmp_path / "r")
    one_line_error(code, err, "applies to BLT models only", "blt-small")
    code, _, err = run(capsys, "train", "--data", text_file, "--preset", "tiny", "--steps", 1,
                       "--set", "model.local.dim=8", "--out", tmp_path / "r")
    one_line_error(code, err, "model.local")


def test_patches_show_cut_characters_readably(capsys, tmp_path, text_file):
    ckpt = tiny_run(capsys, text_file, tmp_path / "r")
    text = "Привет, как дела? 日本語のテキスト"
    code, out, err = run(capsys, "patches", ckpt, "--text", text, "--patching", "fixed",
                         "--patch-size", 3)
    assert code == 0, err
    assert "\ufffd" not in out
    assert "'р\\xd0'" in out and "'\\xb8в'" in out  # "При": П | р + half of и | ...
    assert "cut inside a character" in out


def test_stdin_ingest_leaves_no_stray_progress_line(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "untok", "data", "ingest", "-", "-o", str(tmp_path / "s")],
        input=b"some text from a pipe\n" * 100, capture_output=True,
        env={**os.environ, "UNTOK_CACHE": str(tmp_path / "cache")})
    assert process.returncode == 0, process.stderr
    assert b"0.00B" not in process.stderr and process.stderr.strip() == b""


def test_max_bytes_has_help_text():
    from untok.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("generate", "eval"):
        action = next(a for a in sub[command]._actions if a.dest == "max_bytes")
        assert action.help and "N" in action.help


# 12. a context no budget can afford -------------------------------------------------------

def test_a_context_that_cannot_train_within_the_budget(capsys, tmp_path):
    from conftest import shakespeare

    started = time.perf_counter()
    # 1.5e13 FLOPs a step: 6 s would take 2.5 TFLOP/s, far beyond any CPU
    code, _, err = run(capsys, "train", "--data", shakespeare(), "--preset", "tiny",
                       "--set", "model.context=100000", "--minutes", 0.1, "--out",
                       tmp_path / "r", "--quiet")
    one_line_error(code, err, "one training step", "model.context", "0.1-minute budget")
    assert time.perf_counter() - started < 60


# 13. evaluation that stays held out -------------------------------------------------------

def test_eval_of_the_training_data_uses_the_runs_split(capsys, tmp_path, text_file):
    ckpt = tiny_run(capsys, text_file, tmp_path / "r", "--set", "data.val_bytes=5000")
    code, out, err = run(capsys, "eval", ckpt / "best", "--data", text_file, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["held_out"]["split_rule"] == "run" and result["held_out"]["training_data"]
    assert result["bytes"] == 5000  # not the 2,000 of a fresh 10% tail
    code, out, _ = run(capsys, "eval", ckpt / "best", "--data", text_file)
    assert "the run's own training data" in out and "last 5,000 bytes" in out


def test_eval_flags_val_bytes_that_the_run_trained_on(capsys, tmp_path, text_file):
    ckpt = tiny_run(capsys, text_file, tmp_path / "r")
    copied = tmp_path / "excerpt.txt"
    copied.write_bytes(text_file.read_bytes()[2000:12000])  # all of it training bytes
    code, out, err = run(capsys, "eval", ckpt / "best", "--data", copied, "--json")
    assert code == 0, err
    held_out = json.loads(out)["held_out"]
    assert held_out["overlap"] is not None and held_out["overlap"] > 0.9
    code, out, _ = run(capsys, "eval", ckpt / "best", "--data", copied)
    assert "warning:" in out and "not all held out" in out
    fresh = tmp_path / "fresh.txt"
    fresh.write_bytes(bytes(range(256)) * 40)
    code, out, _ = run(capsys, "eval", ckpt / "best", "--data", fresh, "--json")
    assert json.loads(out)["held_out"]["overlap"] == 0.0
    assert math.isfinite(json.loads(out)["bpb"])


def test_resuming_a_run_folder_continues_from_last_not_best(capsys, tmp_path, text_file):
    out = tiny_run(capsys, text_file, tmp_path / "r", steps=10)
    kept = tmp_path / "step10"
    shutil.copytree(out / "last", kept)
    assert run(capsys, "train", "--resume", out / "last", "--steps", 20, "--quiet")[0] == 0
    shutil.rmtree(out / "best")
    shutil.copytree(kept, out / "best")  # best is now older than last
    code, _, err = run(capsys, "train", "--resume", out, "--steps", 25, "--quiet")
    assert code == 0, err
    starts = [json.loads(line) for line in (out / "metrics.jsonl").open()
              if '"start"' in line]
    assert starts[-1]["step"] == 20


def test_eval_finds_the_split_of_a_checkpoint_that_does_not_record_it(capsys, tmp_path,
                                                                      text_file):
    ckpt = tiny_run(capsys, text_file, tmp_path / "r", "--set", "data.val_bytes=5000")
    state_file = ckpt / "best" / "train_state.json"
    state = json.loads(state_file.read_text())
    del state["data"]["split"]  # as written before checkpoints recorded their split
    state_file.write_text(json.dumps(state))
    code, out, err = run(capsys, "eval", ckpt / "best", "--data", text_file, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["held_out"]["split_rule"] == "run" and result["bytes"] == 5000
