"""Files written by earlier releases keep working (see tests/fixtures/README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import untok
from untok.errors import UntokError
from untok.hardware import cpu_vendor

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1"
# torch's CPU capability and the CPU's vendor where v0.1 and shipped/sample.txt.utk were
# written (fixtures/README.md): containers decode byte-exact only on the same kind of CPU
FIXTURE_CPU = ("AVX512", "GenuineIntel")
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def skip_unless_written_on(cpu: tuple[str, str]) -> None:
    here = (torch.backends.cpu.get_cpu_capability(), cpu_vendor())
    if here != cpu:
        pytest.skip(f"the fixture was compressed on a {cpu[1]} CPU with {cpu[0]}; this one is "
                    f"{here[1] or 'of an unknown vendor'} with {here[0]}, whose kernels round "
                    "differently")


def sample_log_probs(model, text: str) -> list[float]:
    units = model.units
    ids = torch.tensor([[units.bos, *units.encode(text.encode())]])
    with torch.no_grad():
        lp = model(ids[:, :-1]).log_prob(ids[:, 1:])[0]
    return [float(lp.sum()), *map(float, lp[:5])]


@pytest.mark.parametrize("name", sorted(EXPECTED["checkpoints"]))
def test_old_checkpoints_load_and_score_the_same(name: str) -> None:
    model = untok.load(FIXTURES / name)
    got = sample_log_probs(model, EXPECTED["sample"])
    assert got == pytest.approx(EXPECTED["checkpoints"][name], abs=1e-4, rel=1e-5)


def test_old_container_decompresses_byte_exact() -> None:
    """Byte-exact on the kind of CPU that wrote the fixture: float kernels for other vector
    instructions round differently (newer files name their CPU kind and refuse another)."""
    skip_unless_written_on(FIXTURE_CPU)
    model = untok.load(FIXTURES / "flat")
    blob = (FIXTURES / "sample.txt.utk").read_bytes()
    assert untok.decompress(blob, model) == (FIXTURES / "sample.txt").read_bytes()
    # and the current encoder, static over the whole context, codes the same bytes into a
    # smaller file (one stream per batch of chunks, not one per chunk)
    from untok.compression import FORMAT_VERSION, parse_header

    sample = (FIXTURES / "sample.txt").read_bytes()
    new = untok.compress(sample, model, chunk_size=1024, batch_size=2, adapt_lr=0.0,
                         window=None)
    assert parse_header(blob).version == 1 and parse_header(new).version == FORMAT_VERSION
    assert untok.decompress(new, model) == sample and len(new) < len(blob)


@pytest.mark.parametrize("name, cpu, version", [
    ("sample.txt.utk", FIXTURE_CPU, 4),
    ("sample.txt.amd-avx512.utk", ("AVX512", "AuthenticAMD"), 6),
    ("sample.txt.model2.amd-avx512.utk", ("AVX512", "AuthenticAMD"), 6),
    ("sample.txt.model3.amd-avx512.utk", ("AVX512", "AuthenticAMD"), 6),
])
def test_a_file_of_the_shipped_model_decompresses_byte_exact(name, cpu, version) -> None:
    """The shipped models' default coding (tail adaptation, a 64-byte window, the eager
    step) keeps its arithmetic, in files written on two kinds of CPU by the default model
    and the earlier ones (found with no model given): see fixtures/shipped/README.md."""
    shipped = FIXTURES.parent / "shipped"
    blob = (shipped / name).read_bytes()
    assert untok.compression.parse_header(blob).version == version
    skip_unless_written_on(cpu)
    assert untok.decompress(blob) == (shipped / "sample.txt").read_bytes()


def test_a_future_checkpoint_format_is_a_clear_error(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "flat", tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["version"] = 99
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntokError, match="format version 99") as info:
        untok.load(tmp_path / "ckpt")
    assert "\n" not in str(info.value) and "upgrade untok" in str(info.value)
