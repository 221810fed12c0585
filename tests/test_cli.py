import json
import os
import subprocess
import sys

import pytest

from untok.cli import main


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_end_to_end(capsys, tmp_path, text_file):
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_bytes(text_file.read_bytes()[:12000])
    (books / "b.txt").write_bytes(text_file.read_bytes()[12000:])
    (books / "skip.md").write_text("# not a book")
    store = tmp_path / "store"
    code, out, _ = run(capsys, "data", "ingest", books, "--glob", "*.txt", "-o", store,
                       "--quiet")
    assert code == 0 and "2 documents" in out
    code, out, _ = run(capsys, "data", "info", store, "--verify")
    assert code == 0 and "checksum     ok" in out and "latin" in out
    code, out, _ = run(capsys, "data", "info", store, "--json")
    assert json.loads(out)["documents"] == 2

    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", "--data", store, "--preset", "tiny", "--steps", 20,
                       "--out", out_dir, "--quiet", "--set", "train.lr=3e-3")
    assert code == 0 and "20 steps" in out
    code, out, _ = run(capsys, "eval", out_dir / "best", "--data", store, "--json")
    scores = json.loads(out)
    assert code == 0
    assert set(scores) >= {"bpb", "accuracy", "perplexity", "confidence_mean",
                           "confidence_min", "confidence_max", "bytes"}
    code, out, _ = run(capsys, "eval", out_dir / "best", "--data", store, "--per-file")
    assert code == 0 and "bpb" in out
    code, out, _ = run(capsys, "generate", out_dir / "best", "--prompt", "ROMEO:",
                       "--max-bytes", 40, "--seed", 1, "--top-k", 10, "--temperature", 0.8)
    assert code == 0 and out.startswith("ROMEO:")
    code, again, _ = run(capsys, "generate", out_dir / "best", "--prompt", "ROMEO:",
                         "--max-bytes", 40, "--seed", 1, "--top-k", 10, "--temperature", 0.8)
    assert again == out, "seeded generation is reproducible"
    code, out, _ = run(capsys, "train", "--resume", out_dir / "last", "--steps", 25, "--quiet")
    assert code == 0 and "25 steps" in out
    code, _, err = run(capsys, "train", "--data", store, "--preset", "tiny", "--steps", 5,
                       "--out", out_dir, "--quiet")
    assert code == 2 and "already holds a run" in err


def test_generate_edge_cases(capsys, tmp_path, text_file):
    out_dir = tmp_path / "run"
    assert run(capsys, "train", "--data", text_file, "--preset", "tiny", "--steps", 2,
               "--out", out_dir, "--quiet")[0] == 0
    code, out, _ = run(capsys, "generate", out_dir, "--prompt", "x", "--max-bytes", 0)
    assert code == 0 and out == "x\n"
    invalid = b"caf\xe9 \xff".decode("utf-8", errors="surrogateescape")
    code, out, _ = run(capsys, "generate", out_dir, "--prompt", invalid, "--max-bytes", 3,
                       "--no-prompt", "--seed", 0)
    assert code == 0
    prompt_file = tmp_path / "prompt.bin"
    prompt_file.write_bytes(b"\xff\xfe raw")
    code, out, _ = run(capsys, "generate", out_dir, "--prompt-file", prompt_file,
                       "--max-bytes", 3, "--greedy")
    assert code == 0 and out.startswith("\ufffd\ufffd raw")


@pytest.mark.parametrize("args,message", [
    (["data", "ingest", "/nonexistent/path", "-o", "{tmp}/s"], "source not found"),
    (["data", "ingest", "{tmp}/empty.txt", "-o", "{tmp}/s"], "empty"),
    (["data", "info", "{tmp}/nothing"], "not found"),
    (["train", "--data", "{tmp}/text.txt", "--preset", "tiny", "--steps", "2",
      "--set", "model.num_layer=3"], "did you mean 'num_layers'"),
    (["train", "--data", "{tmp}/text.txt", "--preset", "tiny"], "training budget"),
    (["train", "--data", "{tmp}/missing.txt", "--preset", "tiny", "--steps", "2"],
     "data not found"),
    (["eval", "{tmp}/nockpt", "--data", "{tmp}/text.txt"], "checkpoint not found"),
    (["generate", "{tmp}", "--prompt", "x"], "not an untok checkpoint"),
    (["train", "--resume", "{tmp}/nockpt", "--steps", "3"], "checkpoint not found"),
])
def test_bad_input_is_one_clear_line(capsys, monkeypatch, tmp_path, text_file, args, message):
    (tmp_path / "empty.txt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("untok: error:") and message in lines[-1]
    assert "Traceback" not in err


def test_corrupt_checkpoint_cli(capsys, tmp_path, text_file):
    out_dir = tmp_path / "run"
    run(capsys, "train", "--data", text_file, "--preset", "tiny", "--steps", 2,
        "--out", out_dir, "--quiet")
    weights = out_dir / "best" / "model.safetensors"
    weights.write_bytes(b"garbage")
    code, _, err = run(capsys, "generate", out_dir / "best", "--prompt", "x")
    assert code == 2 and "cannot load weights" in err


def test_argparse_rejects_out_of_range(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "ckpt", "--max-bytes", "-1"])
    assert exc.value.code == 2
    assert "must be >= 0" in capsys.readouterr().err


def test_module_and_console_script_help():
    for cmd in ([sys.executable, "-m", "untok", "--help"],
                [os.path.join(os.path.dirname(sys.executable), "untok"), "train", "--help"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "usage: untok" in result.stdout


def test_a_torchrun_process_keeps_its_output_and_exit_status(tmp_path):
    """Under torchrun (WORLD_SIZE > 1) `python -m untok` ends without interpreter shutdown;
    what it printed and its exit status must still come through."""
    alone = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered
    env = {**alone, "WORLD_SIZE": "2"}
    listed = [subprocess.run([sys.executable, "-m", "untok", "presets"], env=e,
                             capture_output=True, text=True, timeout=120) for e in (alone, env)]
    assert [r.returncode for r in listed] == [0, 0] and listed[1].stdout.count("\n") > 5
    assert listed[1].stdout == listed[0].stdout
    failed = subprocess.run([sys.executable, "-m", "untok", "eval", str(tmp_path / "none"),
                             "--data", str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.startswith("untok: error:")
