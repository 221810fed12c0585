import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import untok.checkpoint as checkpoint_module
from untok.checkpoint import read_train_state, save_checkpoint
from untok.config import resolve
from untok.errors import CheckpointError, ConfigError
from untok.models import load
from untok.train.trainer import Trainer, train


def tiny_config(data, *extra):
    return resolve(preset_name="tiny", overrides=[f"data.path={str(data)!r}", *extra])


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_training_writes_best_last_and_metrics(store, tmp_path):
    result = train(tiny_config(store.paths["bin"].with_suffix(""), "train.steps=20"),
                   tmp_path / "run", progress=False)
    assert result.step == 20 and result.stop_reason == "budget"
    for name in ("best", "last"):
        files = {p.name for p in (tmp_path / "run" / name).iterdir()}
        assert {"config.json", "model.safetensors", "train_state.json", "optimizer.pt",
                "metrics.jsonl"} <= files
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    evals = [r for r in lines if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [10, 20]
    steps = [r for r in lines if "loss_bpb" in r]
    assert steps[-1]["loss_bpb"] < steps[0]["loss_bpb"]
    assert all(r["mfu"] > 0 and r["units_per_s"] > 0 for r in steps)
    assert read_train_state(tmp_path / "run" / "last")["step"] == 20


def test_resume_is_exact(text_file, tmp_path):
    config = tiny_config(text_file, "train.steps=12", "train.eval_every=5",
                         "model.dropout=0.1")
    train(config, tmp_path / "straight", progress=False)

    def stop_at_5(trainer):
        if trainer.step == 5:
            trainer.stop_requested = True

    half = train(config, tmp_path / "resumed", progress=False, callbacks=[stop_at_5])
    assert half.step == 5 and half.stop_reason == "interrupted"
    resumed = train(config, tmp_path / "resumed", resume=tmp_path / "resumed" / "last",
                    progress=False)
    assert resumed.step == 12
    a, b = weights(tmp_path / "straight" / "last"), weights(tmp_path / "resumed" / "last")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def test_steps_budget_is_a_run_total(text_file, tmp_path):
    train(tiny_config(text_file, "train.steps=4"), tmp_path / "r", progress=False)
    again = train(tiny_config(text_file, "train.steps=6"), tmp_path / "r",
                  resume=tmp_path / "r" / "last", progress=False)
    assert again.step == 6


def test_bytes_budget(text_file, tmp_path):
    config = tiny_config(text_file, "train.bytes=1000")  # 4 x 32 units per step -> 8 steps
    assert train(config, tmp_path / "r", progress=False).step == 8


def test_early_stopping(text_file, tmp_path, monkeypatch):
    scores = iter([3.0, 2.5, 2.6, 2.4, 2.45, 2.7, 2.1])
    monkeypatch.setattr(Trainer, "run_eval", lambda self, max_bytes: next(scores))
    config = tiny_config(text_file, "train.steps=100", "train.eval_every=1",
                         "train.patience=2")
    result = train(config, tmp_path / "r", progress=False)
    assert result.stop_reason == "early stop"
    assert result.step == 6 and result.best_val_bpb == 2.4
    assert read_train_state(tmp_path / "r" / "best")["step"] == 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_exits_128_plus_it(text_file, tmp_path, signum):
    """Like torchrun and every shell tool: an interrupted run is not a success (130 for
    Ctrl-C, 143 for SIGTERM), and it still leaves a checkpoint to resume."""
    out = tmp_path / "r"
    process = subprocess.Popen(
        [sys.executable, "-m", "untok", "train", "--data", str(text_file), "--preset", "tiny",
         "--steps", "1000000", "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.is_file() and "loss_bpb" in
                                          metrics.read_text()):
        time.sleep(0.1)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert "interrupted" in stdout
    assert f"--resume {out / 'last'}" in stderr
    state = read_train_state(out / "last")
    assert 0 < state["step"] < 1000000


def test_budget_is_required(text_file, tmp_path):
    with pytest.raises(ConfigError, match="training budget"):
        Trainer(resolve(preset_name="tiny", overrides=[f"data.path={str(text_file)!r}"]),
                tmp_path / "r", progress=False)


def test_resume_rejects_other_model(text_file, tmp_path):
    train(tiny_config(text_file, "train.steps=2"), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="different model"):
        train(tiny_config(text_file, "train.steps=4", "model.num_layers=3"), tmp_path / "r",
              resume=tmp_path / "r" / "last", progress=False)


def test_corrupt_and_mismatched_checkpoints(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an untok checkpoint"):
        load(tmp_path / "empty")
    path = save_checkpoint(tmp_path / "c", tiny_model)
    weights_file = path / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot load weights"):
        load(path)
    path = save_checkpoint(tmp_path / "d", tiny_model)
    header = json.loads((path / "config.json").read_text())
    header["model"]["dim"] = 64
    (path / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="cannot load weights"):
        load(path)
    (path / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="corrupt"):
        load(path)
    header["model"]["family"] = "nope"
    (path / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="unknown model family"):
        load(path)


def test_checkpoint_write_is_atomic(tiny_model, tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path / "c", tiny_model)
    before = (good / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_model", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c", tiny_model)
    assert (good / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"], "no temporary directory left"


def test_bf16_autocast_and_accumulation(text_file, tmp_path):
    config = tiny_config(text_file, "train.steps=3", "train.precision='bf16'",
                         "train.grad_accum=2", "train.schedule='constant'")
    result = train(config, tmp_path / "r", progress=False)
    assert result.step == 3 and result.units_seen == 3 * 2 * 4 * 32
    assert result.last_val_bpb is not None and result.last_val_bpb < 9


def test_time_budget_schedule_continues_on_resume(text_file, tmp_path):
    trainer = Trainer(tiny_config(text_file, "train.minutes=1"), tmp_path / "r",
                      progress=False)
    assert trainer.progress_fraction(30) == pytest.approx(0.5)
    trainer.seconds_before = 60.0  # one minute trained by an earlier invocation
    assert trainer.progress_fraction(30) == pytest.approx(90 / 120)
    final = trainer.final_seconds()  # the final evaluation and checkpoint fit the budget
    assert 0 < final < 30
    assert not trainer.budget_reached(59.9 - final) and trainer.budget_reached(60 - final)
    assert trainer.budget_reached(60 - 2 * final, eval_due=True)  # a due eval + the final


@pytest.mark.slow
def test_compiled_training_saves_plain_weights(text_file, tmp_path):
    """torch.compile is applied by the trainer; checkpoints stay loadable uncompiled."""
    from torch._dynamo.utils import counters

    config = tiny_config(text_file, "train.steps=2", "train.compile=true")
    plain = train(tiny_config(text_file, "train.steps=2"), tmp_path / "plain", progress=False)
    counters.clear()
    compiled_frames = []  # after the first step, before any evaluation ran
    compiled = train(config, tmp_path / "compiled", progress=False, callbacks=[
        lambda trainer: compiled_frames.append(counters["stats"]["unique_graphs"])])
    assert compiled_frames[0] >= 1, "the training step itself must go through torch.compile"
    assert compiled.last_val_bpb == pytest.approx(plain.last_val_bpb, abs=1e-3)
    model = load(tmp_path / "compiled" / "last")
    assert not any("_orig_mod" in k for k in weights(tmp_path / "compiled" / "last"))
    assert model.num_params() > 0


def test_tensorboard_tracking_and_eval_samples(tmp_path, text_file):
    pytest.importorskip("tensorboard", reason="--log tensorboard needs the [track] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from untok.cli import main

    code = main(["train", "--preset", "tiny", "--data", str(text_file), "--steps", "20",
                 "--out", str(tmp_path / "run"), "--quiet", "--log", "tensorboard"])
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    samples = [r for r in records if r.get("event") == "sample"]
    assert [s["step"] for s in samples] == [10, 20]  # one per evaluation (tiny: every 10)
    assert samples[0]["prompt"] and isinstance(samples[0]["text"], str)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"),
                              size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss_bpb")]
    assert steps == [r["step"] for r in records if "loss_bpb" in r]
    val = events.Scalars("val/bpb")
    evals = [r for r in records if r.get("event") == "eval"]
    assert [(e.step, round(e.value, 4)) for e in val] == \
        [(r["step"], round(r["val_bpb"], 4)) for r in evals]
    assert {"train/lr", "train/mfu", "train/units_per_s"} <= set(events.Tags()["scalars"])
    assert "sample/text_summary" in events.Tags()["tensors"]


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="train.tracker"):
        resolve(preset_name="tiny", overrides=["train.tracker=mlflow"])
