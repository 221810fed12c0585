"""The compression model that ships in the package: `untok compress FILE` with no -m."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import untok
import untok.shipped as shipped
from conftest import TINY
from untok.cli import main
from untok.compression import CompressionError, parse_header, weights_sha256
from untok.models import build_model

TEXT = b"The default model codes this text without being told which model to use.\n" * 12


@pytest.fixture
def packed_tiny(tmp_path: Path, monkeypatch) -> torch.nn.Module:
    """A tiny model packed as the shipped one (fp16), in place of the real one."""
    torch.manual_seed(0)
    untok.save(tmp_path / "source", build_model(TINY))
    sizes = shipped.pack(tmp_path / "source", tmp_path / "shipped")
    assert sizes["bytes"] < 0.55 * sizes["source_bytes"]  # fp16 weights: half the file
    monkeypatch.setattr(shipped, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setattr(shipped, "EARLIER", tmp_path / "earlier")
    return shipped.default_model()


def test_default_model_round_trips_without_a_checkpoint(packed_tiny, tmp_path, capsys):
    assert next(packed_tiny.parameters()).dtype == torch.float32  # fp16 on disk only
    blob = untok.compress(TEXT)  # the API: no model given
    assert parse_header(blob).model_sha256 == weights_sha256(packed_tiny)
    assert untok.decompress(blob) == TEXT
    source = tmp_path / "notes.txt"
    source.write_bytes(TEXT)
    assert main(["compress", str(source), "-q"]) == 0  # the CLI: no -m
    source.unlink()
    assert main(["decompress", str(source) + ".utk", "-q"]) == 0
    assert source.read_bytes() == TEXT


def test_a_file_from_another_model_names_it(packed_tiny, tmp_path, capsys):
    other = build_model(TINY)
    blob = untok.compress(TEXT, other)
    with pytest.raises(CompressionError, match="different model .* decompress it with that"):
        untok.decompress(blob)
    (tmp_path / "x.utk").write_bytes(blob)
    assert main(["decompress", str(tmp_path / "x.utk"), "-q"]) == 2
    assert "compressed with a different model" in capsys.readouterr().err


def test_files_of_an_earlier_default_model_still_decompress(packed_tiny, tmp_path, capsys):
    """A release that ships a new default keeps the earlier ones (shipped/earlier/<n>):
    the files they wrote decompress with no model given, through the API and the CLI."""
    old = untok.compress(TEXT)
    (tmp_path / "earlier").mkdir()
    (tmp_path / "shipped").rename(tmp_path / "earlier" / "1")
    torch.manual_seed(1)
    untok.save(tmp_path / "newer", build_model(TINY))
    shipped.pack(tmp_path / "newer", tmp_path / "shipped")
    new = untok.compress(TEXT)
    assert parse_header(new).model_sha256 != parse_header(old).model_sha256
    assert untok.decompress(old) == TEXT and untok.decompress(new) == TEXT
    (tmp_path / "old.txt.utk").write_bytes(old)
    assert main(["decompress", str(tmp_path / "old.txt.utk"), "-q"]) == 0
    assert (tmp_path / "old.txt").read_bytes() == TEXT
    other = untok.compress(TEXT, build_model(TINY))  # a model shipped nowhere
    with pytest.raises(CompressionError, match="different model"):
        untok.decompress(other)


def test_no_shipped_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shipped, "SHIPPED", tmp_path / "missing")
    (tmp_path / "notes.txt").write_bytes(TEXT)
    assert main(["compress", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert "ships no default compression model; pass -m" in err and err.count("\n") == 1
    assert not (tmp_path / "notes.txt.utk").exists()


@pytest.mark.skipif(not shipped.has_default_model(), reason="no shipped model in this tree")
def test_the_shipped_model_is_a_byte_model_that_compresses_text():
    model = shipped.default_model()
    blob = untok.compress(TEXT, model)
    assert untok.decompress(blob, model) == TEXT
    assert 8 * len(blob) / len(TEXT) < 3.0  # repetitive English: well under 3 bits per byte
