"""Smoke tests: every benchmark script runs with a tiny budget and records every field.
The figures themselves are not asserted (speed is measured in benchmarks, not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SHARED
from untok.checkpoint import save_checkpoint
from untok.config import ModelConfig
from untok.models import build_model

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(tmp_path, script, *args, timeout=600):
    pytest.importorskip("transformers")
    if not (SHARED / "enwik8-4M").is_file():
        pytest.skip("reference corpora missing")
    env = {**os.environ, "UNTOK_BENCH_RESULTS": str(tmp_path)}
    result = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / script.replace(".py", ".json")).read_text())
    assert {"machine", "command", "figures", "date"} <= set(record)
    assert {"cpu", "cores", "torch", "untok"} <= set(record["machine"])
    assert "|---|" in (tmp_path / script.replace(".py", ".md")).read_text()  # a table
    return record["figures"]


@pytest.mark.slow
def test_train_speed_smoke(tmp_path):
    figures = run_bench(tmp_path, "train_speed.py", "--shapes", "tiny", "--repeats", "1",
                        "--steps", "1")
    row = figures["shapes"]["tiny"]
    for name in ("untok", "untok-compiled", "transformers-gpt2"):
        assert {"bytes_per_s", "bytes_per_s_runs", "mfu", "ratio", "peak_rss_mb"} <= \
            set(row[name])
    assert row["ratio"] > 0 and figures["matmul_peak_flops"] > 0


@pytest.mark.slow
def test_generate_speed_smoke(tmp_path):
    figures = run_bench(tmp_path, "generate_speed.py", "--bytes", "8", "--repeats", "1",
                        "--shape", "tiny", "--context", "64")
    for name in ("untok", "untok-compiled", "transformers-gpt2"):
        assert {"bytes_per_s", "latency_ms_p50", "latency_ms_p90", "warmup_seconds",
                "peak_rss_mb"} <= set(figures[name])
    assert figures["ratio"] > 0 and figures["ratio_compiled"] > 0


@pytest.mark.slow
def test_quality_smoke(tmp_path):
    figures = run_bench(tmp_path, "quality.py", "--budget-minutes", "0.05")
    for name in ("untok", "bpe"):
        assert {"val_bpb", "val_bytes", "steps", "params"} <= set(figures[name])
        assert figures["curves"][name], "a curve point at least at the end"
    assert set(figures["compressors"]) == {"gzip -9", "bzip2 -9", "xz -9e", "zstd -19",
                                           "xz -9e given train", "zstd -19 --long given train"}
    assert (tmp_path / "quality.png").stat().st_size > 1000


@pytest.mark.slow
def test_blt_smoke(tmp_path):
    # an untrained one-layer entropy model: the bench scores all 4 MB of the store with it
    # (its own, entropy-small, took 2-12 minutes to do that on 2 cores)
    torch.manual_seed(0)
    entropy = save_checkpoint(tmp_path / "entropy", build_model(
        ModelConfig(dim=32, num_layers=1, num_heads=2, context=64)))
    figures = run_bench(tmp_path, "blt.py", "--budget-minutes", "0.05", "--entropy-model",
                        str(entropy), "--eval-bytes", "2048", "--generate-bytes", "8",
                        "--no-compiled")
    assert set(figures["contenders"]) == {"flat", "blt-entropy", "blt-space", "blt-fixed4",
                                          "blt-learned", "bpe"}
    for name, row in figures["contenders"].items():
        assert {"val_bpb", "train_bytes_per_s", "mean_patch_len", "generate_bytes_per_s",
                "params", "flops_per_byte"} <= set(row), name
        assert row["flops_per_byte"] > 0, name
        assert row["generate_compiled_bytes_per_s"] is None, name  # --no-compiled
    assert figures["contenders"]["blt-entropy"]["patching"]["threshold"] is not None
    assert figures["entropy_model_val_bpb"] > 0


@pytest.mark.slow
def test_blt_shapes_smoke(tmp_path):
    shape = "global 256, local 64, 1+1"
    figures = run_bench(tmp_path, "blt_shapes.py", "--minutes", "0.05", "--runs",
                        str(tmp_path / "runs"), "--only", shape, "--eval-bytes", "2048",
                        "--generate-bytes", "8", "--no-compiled")
    assert set(figures["shapes"]) == {"flat (enwik8-small)", shape}
    for name, row in figures["shapes"].items():
        assert {"params", "flops_per_byte", "global_share", "steps", "train_bytes_per_s",
                "val_bpb", "mean_patch_len", "generate_bytes_per_s"} <= set(row), name
    assert figures["shapes"]["flat (enwik8-small)"]["global_share"] is None
    assert 0 < figures["shapes"][shape]["global_share"] < 1
    assert figures["shapes"][shape]["overrides"][-1] == "model.local.decoder_layers=1"


@pytest.mark.slow
def test_mmfree_smoke(tmp_path):
    figures = run_bench(tmp_path, "mmfree.py", "--lengths", "64", "--budget-minutes", "0.05",
                        "--eval-bytes", "2048")
    assert 0 < figures["pack"]["ratio"] < 0.1
    assert len(figures["pack"]["product_us"]) >= 4
    for row in figures["generate"].values():
        assert {"bytes_per_s", "peak_rss_mb"} <= set(row["64"])
    assert {"transformer", "mmfree"} == set(figures["quality"])


@pytest.mark.slow
def test_compress_smoke(tmp_path):
    figures = run_bench(tmp_path, "compress.py", "--runs", str(tmp_path / "runs"),
                        "--minutes", "0.05", "--val-bytes", "1500", "--chunk-size", "500",
                        "--corpora", "tinyshakespeare", "--chunk-sweep", "1000")
    result = figures["corpora"]["tinyshakespeare"]
    assert result["val_bytes"] == 1500 and "xz -9e given train" in result["compressors"]
    model = result["untok"]["0.05"]
    assert {"eval_bpb", "params", "weights_bytes", "runs"} <= set(model)
    assert [run["adapt_lr"] for run in model["runs"]] == [0.0, 3e-4]
    for run in model["runs"]:
        assert {"bpb", "encode_kb_per_s", "decode_kb_per_s",
                "bytes_saved_vs_xz_given_train"} <= set(run)
    assert 0 <= figures["forward_step_mismatch"]["share_differing"] <= 1
    assert [row["chunk_size"] for row in figures["chunk_sweep"]] == [500, 1000]


@pytest.mark.slow
def test_distributed_smoke(tmp_path):
    figures = run_bench(tmp_path, "distributed.py", "--preset", "tiny", "--steps", "6",
                        "--batch", "8")
    assert len(figures["speed"]) == 4
    for row in figures["speed"].values():
        assert row["bytes_per_s"] > 0
    assert set(figures["parity"]) == {"ddp", "fsdp"}
    assert {"max_loss_diff_bpb", "max_weight_diff"} <= set(figures["parity"]["ddp"])


@pytest.mark.slow
def test_options_smoke(tmp_path):
    if not (SHARED / "multilingual").is_dir():
        pytest.skip("reference corpora missing")
    figures = run_bench(tmp_path, "options.py", "--sections", "multilingual", "--minutes",
                        "0.05", "--runs", str(tmp_path / "runs"), "--recipe",
                        str(BENCH.parent / "recipes" / "tiny.toml"))
    rows = figures["multilingual"]
    assert set(rows) == {"byte", "codepoint", "_run"} and "command" in rows.pop("_run")
    for row in rows.values():
        assert {"params", "steps", "train_bytes_per_s", "val_bpb", "languages"} <= set(row)
        assert len(row["languages"]) == 25
        assert all({"bpb", "bits_per_char", "bytes"} <= set(v) for v in row["languages"].values())
    assert rows["byte"]["languages"]["cmn"]["bytes"] == rows["codepoint"]["languages"]["cmn"][
        "bytes"]


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    figures = run_bench(tmp_path, "demo.py", "--candidates", "128 x 2", "--minutes", "0.05",
                        "--curve-minutes", "0.05", "--runs", str(tmp_path / "runs"))
    assert set(figures["compressors"]) == {"gzip -9", "bzip2 -9", "xz -9e",
                                           "xz -9e given train"}
    assert {"val_bpb", "params", "steps", "units_per_s"} <= set(figures["candidates"]["128 x 2"])
    assert figures["curve"]["candidate"] == "128 x 2" and figures["curve"]["points"]


@pytest.mark.slow
def test_tfree_smoke(tmp_path):
    figures = run_bench(tmp_path, "tfree.py", "--minutes", "0.05", "--max-eval", "512",
                        "--runs", str(tmp_path / "runs"))
    assert set(figures["quality"]) == {"T-Free (tfree-small, v 4096)",
                                       "T-Free compact (128 wide, v 766)",
                                       "flat bytes (enwik8-small)", "BPE-4096 + transformer"}
    compact = figures["quality"]["T-Free compact (128 wide, v 766)"]["embedding_head_params"]
    assert compact <= 4096 * 192 / 4  # a quarter of the BPE model's table
    assert set(figures["multilingual"]) == {"T-Free", "flat bytes"}
    assert len(figures["multilingual"]["T-Free"]["languages"]) == 25
    assert "tfree.py" in figures["multilingual_run"]["command"]
    for row in figures["quality"].values():
        assert {"val_bpb", "embedding_head_params", "params", "train_bytes_per_s"} <= set(row)
    assert len(figures["fertility"]) == 25
    assert {"T-Free words", "UTF-8 bytes", "BPE-4k", "BPE-32k"} <= \
        set(figures["fertility"]["eng"])


def test_tfree_keeps_the_last_multilingual_section(tmp_path, monkeypatch):
    """--no-multilingual keeps the last run's multilingual figures, with when and how
    they were made (rendered beside the section)."""
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(BENCH))
    import tfree

    monkeypatch.setattr(tfree, "RESULTS", tmp_path)
    assert tfree.previous_multilingual() == {}
    section = {"T-Free": {"languages": {"eng": {"bpb": 2.0, "bits_per_char": 2.1}},
                          "val_bpb": 2.0, "bits_per_char": 2.1, "steps": 5}}
    (tmp_path / "tfree.json").write_text(json.dumps(
        {"date": "2026-12-02 05:50:04", "command": "python tfree.py --minutes 10",
         "figures": {"multilingual": section}}))
    kept = tfree.previous_multilingual()
    assert kept == {"multilingual": section, "multilingual_run": {
        "date": "2026-12-02", "command": "python tfree.py --minutes 10"}}
    fertility = {"eng": {name: {"per_100_bytes": 20.0, "per_word": 1.5}
                         for name in ("T-Free words", "UTF-8 bytes")}}
    table = tfree.render({"minutes": 10, "fertility": fertility, **kept})
    assert "run of 2026-12-02: `python tfree.py --minutes 10`" in table


@pytest.mark.slow
def test_tokun_smoke(tmp_path):
    if not (SHARED / "multilingual").is_dir():
        pytest.skip("reference corpora missing")
    figures = run_bench(tmp_path, "tokun.py", "--minutes", "0.05", "--max-eval", "1024",
                        "--runs", str(tmp_path / "runs"))
    sections = {name: {k: v for k, v in rows.items() if k not in ("minutes", "command")}
                for name, rows in figures.items()}
    assert "command" in figures["reconstruction"] and "minutes" in figures["enwik8"]
    assert set(sections["reconstruction"]) == {"tokun-4", "tokun-16", "tokun-4x4"}
    for row in sections["reconstruction"].values():
        assert len(row["languages"]) == 25 and set(row["noise"]) == {"0.1", "0.5", "1.0"}
        assert 0 <= row["strict_accuracy"] <= 1
    assert len(sections["multilingual"]) == 4 and len(sections["enwik8"]) == 3
    for row in [*sections["multilingual"].values(), *sections["enwik8"].values()]:
        assert {"val_bpb", "bits_per_char", "train_bytes_per_s",
                "generate_bytes_per_s"} <= set(row)
    assert len(figures["multilingual"]["tokun-lm (tokun-4 encoder, frozen)"]["languages"]) == 25


@pytest.mark.slow
def test_serve_smoke(tmp_path):
    pytest.importorskip("fastapi")
    figures = run_bench(tmp_path, "serve.py", "--minutes", "0.05", "--bytes", "16",
                        "--clients", "1,2", "--repeats", "2", "--set", "model.kv_heads=2")
    assert figures["preset"] == "small model.kv_heads=2" and figures["kv_heads"] == 2
    assert [row["clients"] for row in figures["load"]] == [1, 2]
    assert all(len(row["runs_bytes_per_s"]) == 2 for row in figures["load"])
    for row in figures["load"]:
        assert {"bytes_per_s", "speedup", "gap_p90_ms", "gap_p90_ratio"} <= set(row)
    assert len(figures["latency"]) == 2
    assert [row["clients"] for row in figures["engine"]] == [1, 2]


@pytest.mark.slow
def test_gpu_smoke(tmp_path):
    """The device check's script, end to end on the CPU, so that the GPU run is one
    command that has already worked."""
    figures = run_bench(tmp_path, "gpu.py", "--smoke")
    assert figures["peak"]["flops"] > 0 and figures["peak"]["source"]
    for row in ("large", "base"):
        train = figures["train"][row]
        for name in ("untok", "untok-compiled", "gpt2", "gpt2-compiled"):
            assert {"bytes_per_s", "mfu", "warmup_seconds", "runs"} <= set(train[name])
        assert train["ratio-eager"] > 0 and train["ratio-compiled"] > 0
    for row in ("blt-small", "mmfree-small"):
        assert figures["others"][row]["untok"]["bytes_per_s"] > 0
    for kind in ("eager", "compiled"):
        assert figures["generate"][f"batch-ratio-{kind}"] > 0
    assert figures["compress"]["compress_kb_per_s"] > 0
    assert figures["compress"]["decompress_kb_per_s"] > 0
    assert not figures["skipped"]


@pytest.mark.slow
def test_compress_shapes_smoke(tmp_path):
    figures = run_bench(tmp_path, "compress_shapes.py", "--shapes", "64x2", "96x1",
                        "--bytes", "3000", "--repeats", "2")
    assert [r["shape"] for r in figures["rows"]] == ["64x2", "96x1"]
    assert figures["rows"][0]["ratio"] == 1.0 and len(figures["rows"][1]["runs_kb_per_s"]) == 2
    assert figures["rows"][1]["params"] < figures["rows"][0]["params"] * 2


@pytest.mark.slow
def test_compress_default_smoke(tmp_path):
    """The baseline is this very tree, run in a subprocess: it must code the same bytes.
    Each repeat goes round every class (and the baseline), so every kind has one sample
    per round."""
    source = Path(__file__).resolve().parents[1] / "src"
    figures = run_bench(tmp_path, "compress_default.py", "--bytes", "4000", "--classes",
                        "wikipedia", "python", "--baseline-src", str(source), "--repeats", "2")
    for row in figures["classes"].values():
        assert {"xz -9e", "gzip -9", "bzip2 -9"} <= set(row["classic_bpb"])
        for kind in ("default", "compiled", "static", "baseline"):
            assert {"bpb", "compress_kb_per_s", "decompress_kb_per_s"} <= set(row[kind])
            assert row[kind]["repeats"] == 2
        assert row["baseline"]["bytes"] == row["default"]["bytes"]
    assert figures["default_adaptation"]["lr"] > 0 == figures["static_options"]["adapt_lr"]
    assert figures["baseline_options"] == figures["default_options"]
    assert len(figures["matmul_peak_gflops"]) == 2


@pytest.mark.slow
def test_compress_settings_smoke(tmp_path):
    figures = run_bench(tmp_path, "compress_settings.py", "--bytes", "3000", "--classes",
                        "wikipedia", "--repeats", "2")
    assert figures["classes"] and figures["model"].startswith("128 x 3")
    for row in figures["classes"].values():
        for setting in figures["settings"]:
            assert {"bpb", "kb_per_s", "speed_ratio"} <= set(row[setting])
        assert row["default"]["speed_ratio"] == 1.0
