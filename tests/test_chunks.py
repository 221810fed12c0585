"""tokun's layout (characters as fixed-width bytes in chunks) and its chunk autoencoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED
from untok.chunks import char_bytes, char_ids, chunk
from untok.nn.chunk_autoencoder import ChunkAutoencoder, reconstruction_loss, strict_accuracy
from untok.units import CodepointUnits


def corpora() -> list:
    files = sorted(p for p in SHARED.rglob("*") if p.is_file() and p.suffix != ".md")
    return files or [pytest.param(None, marks=pytest.mark.skip("no shared data"))]


@pytest.mark.parametrize("path", corpora(), ids=lambda p: getattr(p, "name", "none"))
def test_every_shared_file_round_trips_through_three_byte_characters(path):
    units = CodepointUnits()
    data = path.read_bytes()[:400_000]
    ids = torch.from_numpy(units.encode(data))
    wide = char_bytes(ids, 4)
    assert int(wide[:, 0].max()) == 0  # the top byte of UTF-32-BE is always zero
    assert units.decode(char_ids(char_bytes(ids, 3)).numpy()) == data


def test_every_byte_value_and_random_bytes_round_trip():
    units = CodepointUnits()
    for data in (bytes(range(256)), bytes(np.random.default_rng(0).integers(0, 256, 5000,
                                                                           dtype=np.uint8))):
        ids = torch.from_numpy(units.encode(data))
        assert units.decode(char_ids(char_bytes(ids)).numpy()) == data
    specials = torch.tensor([units.bos, units.eos, units.pad])
    assert char_ids(char_bytes(specials)).tolist() == specials.tolist()  # 3 bytes hold them


def test_chunks_pad_the_last_group():
    ids = torch.arange(10)[None]
    got = chunk(ids, 4, pad=-1)
    assert got.shape == (1, 3, 4) and got[0, -1].tolist() == [8, 9, -1, -1]
    assert chunk(torch.arange(8)[None], 4, pad=-1).shape == (1, 2, 4)
    with pytest.raises(ValueError, match="3 or 4"):
        char_bytes(ids, 2)


@pytest.mark.parametrize("levels", [(4,), (16,), (4, 4)])
def test_autoencoder_shapes(levels):
    model = ChunkAutoencoder(width=3, levels=levels, dim=32, byte_dim=8)
    chars = model.chars
    data = torch.randint(0, 256, (2, 5, chars, 3))
    vectors = model.encode(data)
    assert vectors.shape == (2, 5, 32)
    assert model.decode(vectors).shape == (2, 5, chars, 3, 256)


def test_a_small_autoencoder_learns_to_reconstruct_every_character(text_file):
    torch.manual_seed(0)
    units = CodepointUnits()
    ids = torch.from_numpy(units.encode(text_file.read_bytes()[:1500]))
    data = char_bytes(chunk(ids, 4, pad=units.pad))  # (S, 4, 3)
    model = ChunkAutoencoder(width=3, levels=(4,), dim=64, byte_dim=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(400):
        optimizer.zero_grad()
        reconstruction_loss(model(data), data).backward()
        optimizer.step()
    with torch.no_grad():
        assert strict_accuracy(model(data), data) == 1.0
