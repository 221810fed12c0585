from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from untok.config import ModelConfig
from untok.data.ingest import ingest
from untok.models import build_model

# UNTOK_SHARED_DATA: the corpora elsewhere (e.g. carried to a GPU machine)
SHARED = Path(os.environ.get("UNTOK_SHARED_DATA")
              or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SHAKESPEARE = SHARED / "tinyshakespeare.txt"

TINY = ModelConfig(dim=32, num_layers=2, num_heads=2, context=32)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Keep every test's cached stores away from the user's cache."""
    monkeypatch.setenv("UNTOK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.manual_seed(0)


def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"reference corpus missing: {SHAKESPEARE} (see ../shared/data/README.md)")
    return SHAKESPEARE


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """~20 KB of real text (Tiny Shakespeare's opening) as a plain file."""
    path = tmp_path / "text.txt"
    path.write_bytes(shakespeare().read_bytes()[:20000])
    return path


@pytest.fixture
def store(text_file: Path, tmp_path: Path):
    return ingest([str(text_file)], tmp_path / "store", progress=False)


@pytest.fixture
def tiny_model():
    return build_model(TINY)


def pytest_configure(config) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
