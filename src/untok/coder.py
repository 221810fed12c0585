"""The model-driven range coder that :mod:`untok.compression` runs on both sides: the model's
one-unit ``step`` over a batch of chunks, :func:`quantize` turning its logits into integer
frequencies, ``constriction`` coding each chunk's bytes with them, and (optionally) the model
learning from the bytes as they are coded. Everything here must give bit-identical results
when the encoder and the decoder run it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from constriction import stream
from torch import nn
from tqdm.auto import tqdm

from untok.errors import UntokError
from untok.generate import compile_decoding
from untok.models.base import next_unit_loss
from untok.models.registry import capabilities
from untok.units import BOS, NUM_BYTES, PAD

PRECISION = 24  # frequencies are integers summing to 2**PRECISION
# which weights adaptation trains (Adaptation.scope); "auto": "tail" where the model has one
ADAPT_SCOPES = ("auto", "tail", "all", "mlp")


class CompressionError(UntokError):
    """A container that is damaged, truncated, or needs another model to decode."""


def quantize(logits: torch.Tensor) -> np.ndarray:
    """Integer frequencies Float64[B, 256] (whole numbers, as ``constriction`` takes them)
    from next-unit logits Float[B, V].

    Only the 256 byte values are coded (specials are never emitted). Every byte gets at least
    1, the frequencies sum to exactly ``2**PRECISION``, and the rounding remainder goes to the
    most likely byte. Computed in float64 on the CPU (every value below 2**53 is exact):
    identical logits give identical frequencies on both sides.
    """
    total = 1 << PRECISION
    probs = logits[:, :NUM_BYTES].detach().to("cpu", torch.float64).softmax(-1).numpy()
    if not np.isfinite(probs).all():
        raise CompressionError("the model gave non-finite logits (NaN or inf); its weights "
                               "are damaged or it was trained into divergence")
    freqs = np.floor(probs * (total - NUM_BYTES)) + 1.0
    freqs[np.arange(len(freqs)), probs.argmax(-1)] += total - freqs.sum(-1)
    return freqs


class Row:
    """One chunk with a range-coder stream of its own (formats 1-4): ``pick`` gets the
    chunk's next byte given the model's integer frequencies Float64[1, 256] for it, by
    encoding the known byte (``encode``), decoding it (``words`` given) or reading it from
    a stored chunk (neither)."""

    def __init__(self, raw: bytes = b"", *, encode: bool = False,
                 words: np.ndarray | None = None) -> None:
        self.raw, self.position = bytearray(raw), 0
        self.symbols = np.frombuffer(self.raw, np.uint8).astype(np.int32) if encode else None
        self.encoder = stream.queue.RangeEncoder() if encode else None
        self.decoder = stream.queue.RangeDecoder(words) if words is not None else None

    def pick(self, freqs: np.ndarray) -> int:
        if self.decoder is not None:
            self.raw.append(int(self.decoder.decode(_CODER, freqs)[0]))
        elif self.encoder is not None:
            self.encoder.encode(self.symbols[self.position:self.position + 1], _CODER, freqs)
        self.position += 1
        return self.raw[self.position - 1]


class ChunkStreams:
    """The bytes of a batch whose chunks each have a stream of their own (formats 1-4)."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def pick(self, live: int, freqs: np.ndarray) -> np.ndarray:
        """The next byte of rows ``[0, live)``, given their frequencies Float64[>= live,
        256]."""
        return np.array([row.pick(freqs[i:i + 1]) for i, row in enumerate(self.rows[:live])])


class BatchStream:
    """One range-coder stream for a whole batch (formats 5 on): at every step the next byte of
    each row still running is coded in row order, all of them in one call. The rows still
    running are always the first ones (only a file's last chunk is shorter than the others),
    and one stream ends once per batch instead of once per chunk.

    Encodes ``chunks`` when given, else decodes ``words`` into chunks of ``lengths``. The
    rows of ``stored`` (Bool[rows]) are not in the stream: their bytes are known on both
    sides (``chunks`` holds them when decoding), so a chunk the model would expand costs
    its own size. ``bits`` (Float64[rows]) is what each row has cost so far when encoding.
    """

    def __init__(self, lengths: list[int], *, chunks: list[bytes] | None = None,
                 words: np.ndarray | None = None, stored: np.ndarray | None = None) -> None:
        self.lengths = lengths
        self.stored = np.zeros(len(lengths), bool) if stored is None else stored
        self.bytes = np.zeros((max(lengths, default=0), len(lengths)), np.int32)  # (step, row)
        for row, chunk in enumerate(chunks or []):
            self.bytes[:len(chunk), row] = np.frombuffer(chunk, np.uint8)
        self.encoder = stream.queue.RangeEncoder() if words is None else None
        self.decoder = stream.queue.RangeDecoder(words) if words is not None else None
        self.bits = np.zeros(len(lengths))
        self.step = 0

    def pick(self, live: int, freqs: np.ndarray) -> np.ndarray:
        """As :meth:`ChunkStreams.pick`."""
        column = self.bytes[self.step, :live]
        coded = ~self.stored[:live] if self.stored.any() else slice(None)
        if self.encoder is not None:
            self.encoder.encode(column[coded], _CODER, freqs[:live][coded])
            self.bits[:live] += PRECISION - np.log2(freqs[np.arange(live), column])
        else:
            column[coded] = self.decoder.decode(_CODER, freqs[:live][coded])
        self.step += 1
        return column

    def compressed(self) -> bytes:
        """The encoded stream: 32-bit little-endian words."""
        return self.encoder.get_compressed().astype("<u4").tobytes()

    def chunks(self) -> list[bytes]:
        """The bytes of every row."""
        return [self.bytes[:length, row].astype(np.uint8).tobytes()
                for row, length in enumerate(self.lengths)]


def encode_batch(stepper: Stepper, chunks: list[bytes], bar: tqdm) -> bytes:
    """The payload of a coded batch (formats 5 on): a bitmap of the chunks stored as they are
    (bit i of byte i // 8: those the model would expand; the batch is then coded again
    without them, which only a batch mixing such chunks with others pays for), their bytes,
    then the stream of the others. Every chunk stored: their bytes alone."""
    lengths = [len(chunk) for chunk in chunks]
    coder = BatchStream(lengths, chunks=chunks)
    stepper.run(coder, lengths, bar)
    expands = coder.bits >= 8 * np.array(lengths)
    if expands.all():
        return b"".join(chunks)
    if expands.any():
        coder = BatchStream(lengths, chunks=chunks, stored=expands)
        stepper.run(coder, lengths, tqdm(disable=True))
    stored = b"".join(chunk for chunk, keep in zip(chunks, expands, strict=True) if keep)
    return np.packbits(expands, bitorder="little").tobytes() + stored + coder.compressed()


def decode_batch(stepper: Stepper, payload: bytes, lengths: list[int], bar: tqdm,
                 name: str) -> bytes:
    """The bytes of the chunks (of ``lengths``) of a coded batch's ``payload``
    (:func:`encode_batch`); ``name`` says which chunks in an error."""
    flags = -(-len(lengths) // 8)
    stored = np.unpackbits(np.frombuffer(payload[:flags], np.uint8), count=len(lengths),
                           bitorder="little").astype(bool)
    known, offset = [], flags
    for length, keep in zip(lengths, stored, strict=True):
        known.append(payload[offset:offset + length] if keep else b"")
        offset += length if keep else 0
    if len(payload) < offset or (len(payload) - offset) % 4:
        raise CompressionError(f"the file is damaged: the payload of {name} has an impossible "
                               "size")
    words = np.frombuffer(payload[offset:], "<u4").astype(np.uint32)
    coder = BatchStream(lengths, chunks=known, words=words, stored=stored)
    stepper.run(coder, lengths, bar)
    return b"".join(coder.chunks())


_CODER = stream.model.Categorical(perfect=False)


@dataclass(frozen=True)
class Adaptation:
    """Online learning while coding: after every ``every`` bytes of a batch, one Adam step
    with learning rate ``lr`` on those bytes (0 = the model stays as it is). Both sides make
    the same updates, so the model keeps learning from the file as it codes it.

    ``scope`` says what learns. ``tail``: the last block's MLP and the head, trained on the
    residual streams the coding steps computed (each byte with its whole coding context;
    no second forward pass), for models with ``Capabilities.adapts_tail``. ``all`` / ``mlp``:
    every weight / the blocks' MLPs, trained by the model's loss on the last ``every``
    bytes of each row (a forward and backward pass of its own, from a fresh context)."""

    lr: float = 0.0
    every: int = 32
    scope: str = "all"

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The weights of ``model`` that adapt."""
        if self.scope == "tail":
            found = {id(p): p for m in model.tail_modules() for p in m.parameters()}
            return list(found.values())
        return [p for name, p in model.named_parameters()
                if self.scope == "all" or ".mlp." in name]


def resolve_scope(model: nn.Module, scope: str) -> str:
    """The scope ``scope`` names for ``model`` (``auto``: ``tail`` where it has one, else
    ``all``), or a :class:`CompressionError` for a tail it lacks."""
    has_tail = capabilities(model).adapts_tail
    if scope == "auto":
        return "tail" if has_tail else "all"
    if scope == "tail" and not has_tail:
        raise CompressionError("this model has no tail to adapt (a transformer byte model "
                               "has); use --adapt-scope all")
    return scope


class Settings(Protocol):
    """What the coder reads of a container's header (:class:`untok.compression.Header`)."""

    batch_size: int
    compiled: bool
    adaptation: Adaptation
    window: int


class Stepper:
    """The model that codes, the same on both sides: ``model`` itself, or a copy of it
    when the step is compiled or adapts. An adapting copy is reset to ``model``'s weights at
    the start of every batch, in place, so a compiled step is compiled once per file."""

    def __init__(self, model: nn.Module, header: Settings) -> None:
        self.source, self.header = model, header
        copied = header.compiled or header.adaptation.lr
        self.model = copy.deepcopy(model) if copied else model
        if header.compiled:
            compile_decoding(self.model)

    def learner(self, rows: int, steps: int) -> Learner | None:
        if not self.header.adaptation.lr:
            return None
        self.model.load_state_dict(self.source.state_dict())  # (copies into the same tensors)
        return Learner(self.model, self.header.adaptation, rows, steps)

    def run(self, stream: ChunkStreams | BatchStream, lengths: list[int], bar: tqdm) -> None:
        """Step over ``len(lengths)`` chunks side by side (longest first), each from a fresh
        state and a BOS, taking the next byte of every unfinished row from ``stream``.
        Finished rows are fed byte 0, so every step has the same shape on both sides; a
        compiled step always gets ``batch_size`` rows (a short last batch is padded with
        empty ones)."""
        if lengths != sorted(lengths, reverse=True):
            raise ValueError("the rows of a batch must be ordered longest first")
        if self.header.compiled and len(lengths) < self.header.batch_size:
            lengths = [*lengths, *[0] * (self.header.batch_size - len(lengths))]
        model, steps = self.model, max(lengths)
        device = next(model.parameters()).device
        window = {"window": self.header.window} if self.header.window else {}
        state = model.new_state(len(lengths), **window)
        units = torch.full((len(lengths), 1), BOS, device=device)
        next_units = np.zeros(len(lengths), np.int64)
        learner = self.learner(len(lengths), steps)
        try:
            for t in range(steps):
                scores, state = model.step(state, units)
                freqs = quantize(scores[:, -1].byte_logits)
                live = sum(t < length for length in lengths)
                next_units[:live] = stream.pick(live, freqs)
                next_units[live:] = 0
                units = torch.tensor(next_units, device=device)[:, None]
                bar.update(live)
                if learner:
                    learner.observe(t, units[:, 0], live)
        finally:
            if learner:
                learner.close()


class Learner:
    """Adam steps on ``model`` (a copy: see :class:`Stepper`) over every ``every`` new
    bytes of a batch (targets of finished rows are PAD: not learned). With the ``tail``
    scope a hook keeps what enters the tail at every coding step, Float[B, 1, D] each."""

    def __init__(self, model: nn.Module, adaptation: Adaptation, rows: int, steps: int):
        self.model = model
        self.every = adaptation.every
        learning = adaptation.parameters(model)
        if not learning:
            raise CompressionError(f"this model has no weights that adapt with scope "
                                   f"{adaptation.scope!r}; use --adapt-scope all")
        chosen = {id(p) for p in learning}
        for parameter in model.parameters():  # (the model is a copy)
            parameter.requires_grad_(id(parameter) in chosen)
        self.optimizer = torch.optim.Adam(learning, lr=adaptation.lr)
        device = next(model.parameters()).device
        self.units = torch.full((rows, steps + 1), PAD, device=device)
        self.units[:, 0] = BOS
        self.states: list[torch.Tensor] = []
        self.entered: torch.Tensor | None = None  # what entered the tail last
        self.hook = model.tail_entry().register_forward_pre_hook(self._keep) \
            if adaptation.scope == "tail" else None

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        # (one attribute, not a list append: a compiled step then needs no new guard
        # for every length of the list)
        self.entered = inputs[0].detach()

    def observe(self, t: int, units: torch.Tensor, live: int) -> None:
        """The bytes ``units`` (Long[B]) of step ``t``, of which rows [0, live) are real."""
        self.units[:live, t + 1] = units[:live]
        if self.hook is not None:
            self.states.append(self.entered)
        if (t + 1) % self.every:
            return
        window = self.units[:, t + 1 - self.every:t + 2]
        with torch.enable_grad():
            if self.hook is not None:
                logits = self.model.tail_logits(torch.cat(self.states, 1))  # (B, every, V)
                self.states = []
                loss = next_unit_loss(logits, window[:, 1:])
            else:
                loss = self.model.loss(window[:, :-1], window[:, 1:])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()

    def close(self) -> None:
        """Stop keeping tail states (the model copy codes the next batch)."""
        if self.hook is not None:
            self.hook.remove()
