"""untok compress / decompress: exact round trips, honest sizes, clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

import untok
from conftest import TINY, shakespeare
from untok.cli import main
from untok.coder import Adaptation, ChunkStreams, Learner, Row, Stepper
from untok.compression import (
    AUTO_COMPILE,
    CHUNK,
    CODED,
    CPU_KINDS,
    CPU_VENDORS,
    CRC,
    FORMAT_VERSION,
    HEADER,
    HEADERS,
    PRECISION,
    STORED,
    CompressionError,
    Header,
    _batches,
    _read_blocks,
    batch_rows,
    compiles,
    decompress,
    parse_header,
    quantize,
    weights_sha256,
)
from untok.config import ModelConfig, PatchingConfig, resolve
from untok.hardware import cpu_vendor
from untok.models import build_model
from untok.units import BOS
from untok.weights_digest import saved_weights_sha256s


def compress(data: bytes, model, **options) -> bytes:
    """The static eager coder unless a test asks for adaptation or compiling (the default
    adapts, and these tests check exact sizes and chunk independence; compiling takes
    seconds)."""
    return untok.compression.compress(data, model, **{"adapt_lr": 0.0, "compiled": False,
                                                      **options})


def _train(model: torch.nn.Module, text: bytes, steps: int = 150) -> torch.nn.Module:
    """A few hundred Adam steps on ``text``: enough for the model to beat 8 bits per byte."""
    ids = torch.tensor(list(text))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    window = model.config.context
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - window - 1, (16,), generator=gen)
        batch = torch.stack([ids[s:s + window + 1] for s in starts])
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    torch.manual_seed(0)
    return _train(build_model(TINY), shakespeare().read_bytes()[:200_000])


@pytest.fixture(scope="module")
def sample() -> bytes:
    return shakespeare().read_bytes()[-5000:]  # val text, not trained on


def container_overhead(blocks: int) -> int:
    """Header + CRC, table (an entry per batch) + CRC."""
    return HEADER.size + CHUNK.size * blocks + 2 * CRC.size


def per_chunk_body(data: bytes, model: torch.nn.Module, header: Header) -> bytes:
    """The table and payloads of a version 1-4 file: a range-coder stream and a table entry
    per chunk, as untok wrote them before version 5."""
    stepper, table, payloads = Stepper(model, header), bytearray(), []
    for batch in _batches(header):
        chunks = [data[slice(*header.chunk_bounds(i))] for i in batch]
        rows = [Row(chunk, encode=True) for chunk in chunks]
        stepper.run(ChunkStreams(rows), [len(c) for c in chunks], tqdm(disable=True))
        for chunk, row in zip(chunks, rows, strict=True):
            coded = row.encoder.get_compressed().astype("<u4").tobytes()
            method, payload = (CODED, coded) if len(coded) < len(chunk) else (STORED, chunk)
            payloads.append(payload)
            table += CHUNK.pack(len(payload), method, zlib.crc32(chunk))
    return bytes(table) + CRC.pack(zlib.crc32(table)) + b"".join(payloads)


def roundtrip(data: bytes, model, **options) -> bytes:
    blob = compress(data, model, **options)
    assert decompress(blob, model) == data
    return blob


@pytest.mark.parametrize("data", [
    b"",
    b"x",
    b"\xff\xfe\xc3(\x80 invalid \xed\xa0\x80 utf-8 \xc0\xaf",
    bytes(range(256)),
    b"a" * 3000 + b"\x00" * 2000 + b"ab" * 1000,
], ids=["empty", "one-byte", "invalid-utf8", "all-256", "long-runs"])
def test_roundtrip_edge_cases(trained, data: bytes) -> None:
    roundtrip(data, trained, chunk_size=1000, batch_size=8)


def test_roundtrip_random_binary(trained) -> None:
    """A text model would expand random bytes: such chunks are stored as they are."""
    data = os.urandom(3000)
    blob = roundtrip(data, trained, chunk_size=700, batch_size=2)
    assert len(blob) == len(data) + container_overhead(blocks=3)
    mixed = data[:1400] + shakespeare().read_bytes()[-2800:]
    blob = roundtrip(mixed, trained, chunk_size=700, batch_size=3)
    assert len(blob) < 1400 + 2800 * 5 / 8
    # the first batch mixes two random chunks with text: coded, its random chunks stored
    # inside it (bits 0 and 1 of its bitmap)
    blocks = _read_blocks(blob, parse_header(blob))
    assert [method for _, method, _ in blocks] == [CODED, CODED]
    assert blocks[0][0][0] == 0b011 and blocks[0][0][1:1401] == data[:1400]


def test_text_compresses_to_the_models_cross_entropy(trained, sample: bytes) -> None:
    """The compressed payload is the model's bits per byte, plus a few bytes per batch (one
    range-coder stream codes the batch's 4 chunks)."""
    chunk = 1250
    blob = roundtrip(sample, trained, chunk_size=chunk, batch_size=4)
    bits = 0.0
    with torch.no_grad():
        for start in range(0, len(sample), chunk):
            piece = list(sample[start:start + chunk])
            logits = trained(torch.tensor([[BOS, *piece[:-1]]])).byte_logits[0]
            bits -= logits.log_softmax(-1)[torch.arange(len(piece)), piece].sum().item()
    bits /= math.log(2)
    assert 8 * len(blob) / len(sample) < 5.0
    overhead = container_overhead(blocks=1) + 8  # a range coder ends within 64 bits
    assert bits / 8 <= len(blob) <= bits / 8 * 1.002 + overhead


def test_deterministic_and_independent_of_current_threads(trained, sample: bytes) -> None:
    blob = compress(sample, trained, chunk_size=1000, batch_size=5)
    assert compress(sample, trained, chunk_size=1000, batch_size=5) == blob
    before = torch.get_num_threads()
    torch.set_num_threads(1 if before > 1 else 2)
    try:
        assert decompress(blob, trained) == sample  # the recorded thread count is used
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before


def test_quantize_floor_total_and_determinism() -> None:
    logits = torch.randn(6, 264) * 4
    logits[0, 7] = 1e4  # one byte takes (almost) everything
    logits[1, :] = 0.0  # uniform
    logits[2, 100:200] = -torch.inf
    logits[3, 256:] = 50.0  # specials are not coded: they must not take bytes' mass
    freqs = quantize(logits)
    assert freqs.shape == (6, 256)
    assert (freqs >= 1).all()
    assert (freqs.sum(-1) == 2**PRECISION).all()
    assert freqs[0, 7] == 2**PRECISION - 255
    assert len(set(freqs[1, :].tolist())) <= 2  # uniform up to the remainder
    assert (quantize(logits) == freqs).all()
    assert (quantize(logits.double()) == freqs).all()
    with pytest.raises(CompressionError, match="non-finite"):
        quantize(torch.full((1, 264), float("nan")))


def test_weights_hash_names_the_weights_not_the_file(trained, tmp_path: Path) -> None:
    """Format 6 names a model by its weights (stable through a checkpoint, changed by any
    weight); earlier formats by its ``model.safetensors``, whose hash is still known."""
    path = untok.save(tmp_path / "ckpt", trained)
    file_hash = hashlib.sha256((path / "model.safetensors").read_bytes()).digest()
    assert saved_weights_sha256s(trained) == {file_hash}  # (one tied group: one order)
    assert weights_sha256(untok.load(path)) == weights_sha256(trained) != file_hash
    changed = untok.load(path)
    with torch.no_grad():
        changed.norm.weight[0] += 1e-3
    assert weights_sha256(changed) != weights_sha256(trained)


def test_adaptation_roundtrip_learns_and_leaves_the_model_alone(trained, sample: bytes) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    text = sample[:3000]
    static = compress(text, trained, chunk_size=1500, batch_size=2)
    adapted = compress(text, trained, chunk_size=1500, batch_size=2, adapt_lr=3e-3,
                       adapt_every=32)
    assert len(adapted) < len(static)  # it learned from the text as it coded it
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert decompress(adapted, trained) == text
    with pytest.raises(CompressionError, match="adaptation"):
        compress(sample, trained, adapt_lr=-1.0)


@pytest.mark.slow
def test_compiled_step_roundtrip_is_recorded_and_adapts(trained, sample: bytes) -> None:
    """The compiled static-shape step codes 7 chunks in batches of 4 (the last padded to
    the compiled shape), alone and with adaptation; the decoder compiles it too."""
    text = sample[:2100]
    blob = roundtrip(text, trained, chunk_size=300, batch_size=4, compiled=True)
    assert parse_header(blob).compiled and not parse_header(compress(text, trained)).compiled
    adapted = roundtrip(text, trained, chunk_size=300, batch_size=4, compiled=True,
                        adapt_lr=3e-3, adapt_every=16)
    # the compiled step coded with the adapted weights (on 2 KB the total need not shrink)
    payloads = [[block for block, _, _ in _read_blocks(b, parse_header(b))]
                for b in (blob, adapted)]
    assert payloads[0] != payloads[1]


def test_large_inputs_compile_in_few_shapes(trained) -> None:
    """compiled=None compiles from AUTO_COMPILE bytes on, for families with a compiled step;
    a compiled batch has a power-of-two number of rows (few shapes ever compile)."""
    recurrent = build_model(resolve(preset_name="mmfree-tiny").model)
    assert not compiles(trained, None, AUTO_COMPILE - 1) and compiles(trained, None, AUTO_COMPILE)
    assert compiles(trained, True, 10) and not compiles(trained, False, 10**6)
    assert not compiles(recurrent, True, 10**6)
    assert [batch_rows(trained, 64, n, True) for n in (1, 3, 33, 64, 200)] == [1, 4, 64, 64, 64]
    assert batch_rows(trained, 64, 33, False) == 33 and batch_rows(trained, 48, 40, True) == 48


def test_earlier_versions_still_decode(trained, sample: bytes) -> None:
    """Versions 1-4 code every chunk as a stream of its own. A version-1 header (no flags
    byte) and a version-2 one (no window) are read as eager files over the model's whole
    context, adapting every weight; versions 3 and 4 have the layout of 5."""
    text = sample[:1200]
    blob = compress(text, trained, chunk_size=500, batch_size=2, adapt_lr=1e-3,
                    adapt_scope="all")
    fields = list(HEADER.unpack_from(blob))
    assert fields[1] == FORMAT_VERSION == 6 and fields[-4:-2] == [0, 0]
    named = fields[4]
    (fields[4],) = saved_weights_sha256s(trained)  # (before 6: the safetensors file's hash)
    body = per_chunk_body(text, trained, dataclasses.replace(parse_header(blob), version=4))
    for version, head in ((1, HEADERS[1].pack(fields[0], 1, *fields[2:-4])),
                          (2, HEADERS[2].pack(fields[0], 2, *fields[2:-3])),
                          (3, HEADERS[3].pack(fields[0], 3, *fields[2:-1])),
                          (4, HEADERS[4].pack(fields[0], 4, *fields[2:-1]))):
        old = head + CRC.pack(zlib.crc32(head)) + body
        header = parse_header(old)
        assert header.version == version and header.window == 0
        assert header.adaptation.scope == "all" and decompress(old, trained) == text
    assert len(blob) < len(old)  # one stream per batch: smaller than a stream per chunk
    head = HEADERS[5].pack(fields[0], 5, *fields[2:-1])  # (5: the body of 6)
    start = HEADER.size + CRC.size  # (6: one byte more, the CPU's vendor)
    assert decompress(head + CRC.pack(zlib.crc32(head)) + blob[start:], trained) == text
    head = HEADERS[5].pack(fields[0], 5, *fields[2:4], named, *fields[5:-1])
    with pytest.raises(CompressionError, match="different model"):  # 5 names the file
        decompress(head + CRC.pack(zlib.crc32(head)) + blob[start:], trained)
    future = bytearray(blob)
    future[8] = 9
    with pytest.raises(CompressionError, match="format version 9 is not supported"):
        decompress(bytes(future), trained)


def test_a_file_from_another_kind_of_cpu_is_refused_up_front(trained, sample: bytes) -> None:
    """The header names the CPU's vector instructions and its vendor (their kernels round
    differently: an Intel and an AMD CPU with AVX-512 decode each other's files wrong);
    another kind or vendor is a one-line error before any decoding."""
    blob = compress(sample[:600], trained, chunk_size=300, batch_size=2)
    here, vendor = parse_header(blob).cpu, parse_header(blob).vendor
    assert here == torch.backends.cpu.get_cpu_capability() or here == ""
    assert vendor == cpu_vendor() or vendor == ""

    def with_fields(**changed: int) -> bytes:
        fields = list(HEADER.unpack_from(blob))
        fields[-2] = changed.get("cpu", fields[-2])
        fields[-1] = changed.get("vendor", fields[-1])
        head = HEADER.pack(*fields)
        return head + CRC.pack(zlib.crc32(head)) + blob[HEADER.size + CRC.size:]

    if here:
        other = with_fields(cpu=CPU_KINDS.index("ZVECTOR" if here != "ZVECTOR" else "AVX2"))
        with pytest.raises(CompressionError, match="compressed on a CPU computing with"):
            decompress(other, trained)
    if vendor:
        other = with_fields(vendor=CPU_VENDORS.index(
            "AuthenticAMD" if vendor == "GenuineIntel" else "GenuineIntel"))
        with pytest.raises(CompressionError, match="CPU and this one is"):
            decompress(other, trained)
    assert decompress(with_fields(vendor=0), trained) == sample[:600]  # (not recorded)


def test_window_and_adaptation_scope_are_recorded(trained, sample: bytes) -> None:
    """A shorter attention window and MLP-only adaptation code differently, are recorded in
    the header, and decode; a recurrent model (no window to limit) records none."""
    text = sample[:2400]
    plain = compress(text, trained, chunk_size=800, batch_size=3, adapt_lr=3e-3)
    windowed = roundtrip(text, trained, chunk_size=800, batch_size=3, window=8)
    mlp = roundtrip(text, trained, chunk_size=800, batch_size=3, adapt_lr=3e-3,
                    adapt_every=16, adapt_scope="mlp")
    every = roundtrip(text, trained, chunk_size=800, batch_size=3, adapt_lr=1e-3,
                      adapt_scope="all")
    assert parse_header(windowed).window == 8 and parse_header(plain).window == 0
    assert parse_header(mlp).adaptation.scope == "mlp"
    assert parse_header(every).adaptation.scope == "all"
    assert parse_header(plain).adaptation.scope == "tail"  # auto: the tail where there is one
    assert parse_header(windowed).adaptation.scope == "all"  # (nothing adapts)
    assert windowed[HEADER.size:] != compress(text, trained, chunk_size=800,
                                              batch_size=3)[HEADER.size:]
    # a window at least the context is the whole context (recorded as 0)
    assert parse_header(compress(text, trained, window=10_000)).window == 0
    with pytest.raises(CompressionError, match="scope"):
        compress(text, trained, adapt_scope="attention")
    torch.manual_seed(0)
    recurrent = build_model(resolve(preset_name="mmfree-tiny").model).eval()
    assert parse_header(compress(text[:300], recurrent, window=8)).window == 0
    adapted = roundtrip(text[:600], recurrent, chunk_size=300, batch_size=2, adapt_lr=1e-3)
    assert parse_header(adapted).adaptation.scope == "all"  # auto: it has no tail
    with pytest.raises(CompressionError, match="no tail to adapt"):
        compress(text[:300], recurrent, adapt_lr=1e-3, adapt_scope="tail")


def test_tail_adaptation_learns_only_the_tail_from_the_coding_states(trained,
                                                                    sample: bytes) -> None:
    """The tail continues exactly from the states a step computes (its logits equal the
    model's); coding with it trains the last MLP and the head only, smaller than static."""
    ids = torch.tensor([[BOS, *sample[:40]]])
    kept = []
    hook = trained.tail_entry().register_forward_pre_hook(lambda m, a: kept.append(a[0]))
    with torch.no_grad():
        logits = trained(ids).byte_logits
        torch.testing.assert_close(trained.tail_logits(kept[0])[..., :256], logits)
    hook.remove()
    copy = Stepper(trained, parse_header(compress(b"x", trained)))
    learner = Learner(copy.model, Adaptation(lr=3e-3, every=8, scope="tail"), rows=2, steps=8)
    tail = {id(p) for m in trained.tail_modules() for p in m.parameters()}
    assert {id(p) for p in learner.optimizer.param_groups[0]["params"]} == \
        {id(p) for m in copy.model.tail_modules() for p in m.parameters()}
    assert len(tail) < len(list(trained.parameters()))
    learner.close()
    # (on 3,000 bytes the two came out equal on one machine: the whole sample)
    static = compress(sample, trained, chunk_size=2500, batch_size=2)
    adapted = roundtrip(sample, trained, chunk_size=2500, batch_size=2, adapt_lr=3e-3,
                        adapt_scope="tail")
    assert len(adapted) < len(static)


@pytest.mark.parametrize("family", ["mmfree", "blt"])
def test_other_families_roundtrip(family: str, sample: bytes) -> None:
    torch.manual_seed(0)
    config = resolve(preset_name=f"{family}-tiny").model
    if family == "blt":  # BLT decodes one chunk at a time: batch_size falls back to 1
        config = dataclasses.replace(config, patching=PatchingConfig(kind="space", max_len=6))
    model = build_model(config).eval()
    roundtrip(sample[:1500], model, chunk_size=600, batch_size=4)
    roundtrip(sample[:700], model, chunk_size=400, batch_size=2, adapt_lr=1e-3, adapt_every=16)


# -- damaged input ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blob(trained, sample: bytes) -> bytes:
    return compress(sample, trained, chunk_size=1000, batch_size=5)


def test_another_model_is_refused(blob: bytes) -> None:
    other = build_model(TINY)
    with pytest.raises(CompressionError, match="different model"):
        decompress(blob, other)


@pytest.mark.parametrize("cut", [3, 50, 104, 140, -1])
def test_truncated_file(trained, blob: bytes, cut: int) -> None:
    with pytest.raises(CompressionError, match="truncated|magic"):
        decompress(blob[:cut], trained)


def test_wrong_magic_and_trailing_bytes(trained, blob: bytes) -> None:
    with pytest.raises(CompressionError, match="not an untok compressed file"):
        decompress(b"PK\x03\x04" + blob[4:], trained)
    with pytest.raises(CompressionError, match="unexpected bytes"):
        decompress(blob + b"\x00", trained)


@pytest.mark.parametrize("where", ["header", "table", "payload"])
def test_flipped_bit_is_caught(trained, blob: bytes, where: str) -> None:
    position = {"header": 60, "table": 110, "payload": len(blob) - 40}[where]
    damaged = bytearray(blob)
    damaged[position] ^= 0x10
    message = {"header": "header fails", "table": "table fails",
               "payload": "chunks 0-4"}[where]
    with pytest.raises(CompressionError, match=message):
        decompress(bytes(damaged), trained)


def test_a_payload_of_impossible_size_is_caught(trained, blob: bytes) -> None:
    """A table that checks out but gives a coded batch a size its stream cannot have."""
    start = HEADER.size + CRC.size  # (6: one byte more, the CPU's vendor)
    size, method, crc = CHUNK.unpack_from(blob, start)
    assert method == CODED
    table = CHUNK.pack(size + 1, method, crc)
    damaged = (blob[:start] + table + CRC.pack(zlib.crc32(table))
               + blob[start + CHUNK.size + CRC.size:] + b"\x00")
    with pytest.raises(CompressionError, match="payload of chunks 0-4 has an impossible"):
        decompress(damaged, trained)


def test_bad_options(trained) -> None:
    with pytest.raises(CompressionError, match="chunk size"):
        compress(b"abc", trained, chunk_size=0)
    with pytest.raises(CompressionError, match="batch size"):
        compress(b"abc", trained, batch_size=70000)


@pytest.mark.slow
def test_ten_megabytes_roundtrip() -> None:
    """611 chunks, lengths past 2**16 and 2**20: a minimal model and one batch of all
    chunks keep this to a couple of minutes (the per-byte coder calls dominate)."""
    text = shakespeare().read_bytes()
    data = (text * (10_000_000 // len(text) + 1))[:10_000_000]
    model = build_model(ModelConfig(dim=8, num_layers=1, num_heads=1, context=8)).eval()
    blob = compress(data, model, chunk_size=16384, batch_size=1024)
    assert decompress(blob, model) == data


# -- command line ----------------------------------------------------------------------------

def cli(capsys, *args) -> tuple[int, str]:
    """Run ``untok ARGS`` in this process; (exit code, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untok.save(tmp_path_factory.mktemp("ckpt") / "model", trained)


def test_cli_file_roundtrip(capsys, checkpoint: Path, sample: bytes, tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_bytes(sample[:1500])
    code, err = cli(capsys, "compress", source, "-m", checkpoint, "--chunk-size", 500)
    assert code == 0 and "bits per byte" in err
    packed = tmp_path / "notes.txt.utk"
    assert packed.stat().st_size < 1500 * 5 / 8
    code, err = cli(capsys, "decompress", packed, "-m", checkpoint)
    assert code == 2 and "notes.txt already exists; pass --force" in err
    source.unlink()
    code, err = cli(capsys, "decompress", packed, "-m", checkpoint, "-q")
    assert code == 0 and err == ""
    assert source.read_bytes() == sample[:1500]
    code, err = cli(capsys, "decompress", packed, "-m", checkpoint, "-q", "--force")
    assert code == 0 and source.read_bytes() == sample[:1500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "notes.txt.utk"]


def test_cli_compare_prints_the_classic_compressors(capsys, checkpoint: Path, sample: bytes,
                                                    tmp_path: Path) -> None:
    import lzma

    source = tmp_path / "notes.txt"
    source.write_bytes(sample[:3000])
    code = main(["compress", str(source), "-m", str(checkpoint), "--compare", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    sizes = {line.split()[0]: line.split()[-2:] for line in out.splitlines()[1:]}
    assert {"untok", "gzip", "bzip2", "xz", "zstd"} <= set(sizes)
    assert int(sizes["untok"][0].replace(",", "")) == (tmp_path / "notes.txt.utk").stat().st_size
    xz = len(lzma.compress(sample[:3000], preset=9 | lzma.PRESET_EXTREME))
    assert sizes["xz"] == [f"{xz:,}", f"{8 * xz / 3000:.3f}"]


def test_cli_stdin_stdout(checkpoint: Path, sample: bytes) -> None:
    """Through real pipes: `untok compress - | untok decompress -`."""
    def run(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "untok", *args], input=stdin,
                              capture_output=True, timeout=300)

    packed = run("compress", "-", "-m", str(checkpoint), "-q", "--chunk-size", "300",
                 stdin=sample[:900])
    assert packed.returncode == 0 and packed.stderr == b""
    restored = run("decompress", "-", "-m", str(checkpoint), "-q", stdin=packed.stdout)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == sample[:900]


def test_cli_damaged_file_writes_nothing(capsys, checkpoint: Path, blob: bytes,
                                         tmp_path: Path) -> None:
    damaged = bytearray(blob)
    damaged[-40] ^= 0x01
    packed = tmp_path / "x.utk"
    packed.write_bytes(bytes(damaged))
    code, err = cli(capsys, "decompress", packed, "-m", checkpoint, "-q")
    assert code == 2
    assert err.startswith("untok: error: bytes 0-5,000 (chunks 0-4) do not decode") and \
        err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.utk"]


def test_cli_errors(capsys, checkpoint: Path, tmp_path: Path) -> None:
    code, err = cli(capsys, "compress", tmp_path / "nope.txt", "-m", checkpoint)
    assert code == 2 and "cannot read" in err
    odd = tmp_path / "data.bin"
    odd.write_bytes(b"abc")
    code, err = cli(capsys, "decompress", odd, "-m", checkpoint)
    assert code == 2 and "does not end in .utk" in err
    code, err = cli(capsys, "decompress", odd, "-m", checkpoint, "-o", tmp_path / "out")
    assert code == 2 and "wrong magic" in err
    code, err = cli(capsys, "compress", odd, "-m", tmp_path / "none")
    assert code == 2 and "checkpoint not found" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]
