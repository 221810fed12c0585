"""The T-Free family: words as sums of hashed trigram ids, a multi-label head, and an
honest likelihood over a dictionary plus spelled-out words.

    text -> words (untok.words) -> per word: the sum of the embedding rows of its trigram
    ids (untok.trigrams; no per-word table) -> a backbone over words -> a ``hash_size``-wide
    head, trained with binary cross-entropy against the next word's id set

Scoring a word w of the dictionary D: ``s_w = mean(p inside w's ids) - mean(p outside)``
with p = sigmoid(head). The next-word distribution is a softmax over ``exp(t) s_w`` for
w in D plus one *escape* entry (learned bias); a word outside D costs the escape plus its
bytes under an order-1 byte model of the training words (with an end symbol). So the
code length of a text is exact and its bits per byte compare with every other untok
model. Temperature and escape bias are fitted by the cross-entropy of that softmax with
the activations detached, so they calibrate without steering the multi-label training.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from untok.config import ModelConfig
from untok.errors import ConfigError, DataError
from untok.files import cache_dir, write_atomic
from untok.models.base import init_residuals, init_standard
from untok.models.registry import Capabilities, Family, TrainingData, register, shape_summary
from untok.nn.attention import Rope
from untok.nn.stacks import make_stack
from untok.scores import Pick, Scores
from untok.trigrams import hash_whole, word_code
from untok.units import UNIT_KINDS
from untok.words import NO_SPACE, SPECIALS, is_special, join, space_expected, split, word_bytes

END = 256  # the spelling model's end-of-word symbol (and its start context)
LOSS_SCALE = 10.0  # the multi-label loss is a mean over the hash_size outputs per word
CALIBRATION_POSITIONS = 64  # positions per batch that fit the temperature and escape
MAX_SPELLING = 64  # bytes of a sampled escape word at most


class WordUnits:
    """Words as units: ids 0 .. D-1 are the dictionary (special words first), later ids
    are other words interned as they are met (their codes are hashed, so any word has an
    input vector); ``state()`` keeps the dictionary and the spelling counts."""

    name = "words"
    loss_label = "bpw"
    identity = False
    num_content = 1 << 30
    bos, eos, pad = num_content, num_content + 1, num_content + 2
    vocab_size = num_content + 8

    def __init__(self, dictionary: list[str], hash_size: int, ids_per_trigram: int,
                 lowercase_ids: int, seed: int = 0,
                 spelling: list[list[int]] | None = None) -> None:
        words = sorted(SPECIALS) + [w for w in dictionary if w not in SPECIALS]
        self.words: list[str] = list(dict.fromkeys(words))
        self.dict_size = len(self.words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.hash = (hash_size, ids_per_trigram, lowercase_ids, seed)
        self.spelling = np.zeros((END + 1, END + 1), dtype=np.int64)
        for prev, nxt, count in spelling or []:
            self.spelling[prev, nxt] = count
        self._codes: dict[int, np.ndarray] = {}

    def id_of(self, word: str) -> int:
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def code(self, i: int) -> np.ndarray:
        """The hashed ids of word ``i`` (Int64[n_trigrams, m]; BOS/EOS/PAD hashed whole)."""
        if i not in self._codes:
            v, m, k, seed = self.hash
            self._codes[i] = hash_whole(f"special {i - self.num_content}", v, m, seed) \
                if i >= self.num_content else word_code(self.words[i], v, m, k, seed)
        return self._codes[i]

    def encode(self, data: bytes) -> np.ndarray:
        return np.array([self.id_of(w) for w in split(data)], dtype=np.int64)

    def decode(self, ids) -> bytes:
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return join([self.words[i] for i in np.ravel(values) if 0 <= i < self.num_content])

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        out = np.zeros(ids.shape, dtype=np.int64)
        for row in np.ndindex(ids.shape[:-1]):
            previous, suppress = None, False
            for t, i in enumerate(ids[row]):
                if i >= self.num_content:
                    previous, suppress = None, False
                    continue
                word = self.words[i]
                size = len(word_bytes(word))
                if word == NO_SPACE:
                    suppress = True
                elif is_special(word):
                    previous, suppress = None, False
                else:
                    if previous is not None and not suppress and space_expected(previous, word):
                        size += 1  # the implicit space before it
                    previous, suppress = word, False
                out[row + (t,)] = size
        return out

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        lengths = [0 if i >= self.num_content or self.words[i] == NO_SPACE else
                   len(word_bytes(self.words[i]).decode("utf-8", errors="surrogateescape"))
                   for i in np.ravel(ids)]
        return np.array(lengths, dtype=np.int64).reshape(np.shape(ids))

    def in_vocabulary(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids) < self.dict_size

    def state(self) -> dict[str, Any]:
        v, m, k, seed = self.hash
        rows, cols = np.nonzero(self.spelling)
        return {"name": self.name, "dictionary": self.words[:self.dict_size], "hash_size": v,
                "ids_per_trigram": m, "lowercase_ids": k, "seed": seed,
                "spelling": [[int(r), int(c), int(self.spelling[r, c])]
                             for r, c in zip(rows, cols, strict=True)]}

    def spelling_logp(self) -> np.ndarray:
        """log P(next byte or END | previous byte or START), Float64[257, 257] (add-half)."""
        counts = self.spelling + 0.5
        return np.log(counts / counts.sum(1, keepdims=True))


UNIT_KINDS["words"] = WordUnits


def fit_dictionary(train: bytes | Iterable[bytes], size: int, progress: bool = False
                   ) -> dict[str, Any]:
    """The ``size`` most frequent words of ``train`` (bytes, or its documents one by one;
    ties in first-seen order) and the order-1 byte counts of every word occurrence (the
    spelling model). A size above the number of distinct words keeps them all."""
    pieces = [train] if isinstance(train, bytes) else train
    counts: Counter[str] = Counter()
    for piece in tqdm(pieces, desc="dictionary", unit="doc", disable=not progress,
                      leave=False):
        counts.update(w for w in split(piece) if not is_special(w))
    if not counts:
        raise DataError("the train split holds no words to build a dictionary from (it is "
                        "empty or only whitespace); give the T-Free model some text")
    words = [w for w, _ in counts.most_common(size)]
    spelling = np.zeros((END + 1, END + 1), dtype=np.int64)
    for word, count in counts.items():
        data = np.frombuffer(word_bytes(word), dtype=np.uint8).astype(np.int64)
        path = np.concatenate([[END], data, [END]])
        np.add.at(spelling, (path[:-1], path[1:]), count)
    rows, cols = np.nonzero(spelling)
    return {"dictionary": words, "distinct_words": len(counts),
            "spelling": [[int(r), int(c), int(spelling[r, c])]
                         for r, c in zip(rows, cols, strict=True)]}


def tfree_units(config: ModelConfig) -> WordUnits:
    """The units of a config: its built dictionary, or only the special words."""
    w = config.words
    if w.dictionary and not Path(w.dictionary).is_file():
        raise ConfigError(f"the T-Free dictionary {w.dictionary} is missing; leave "
                          "model.words.dictionary empty to build it from the train split")
    fitted = json.loads(Path(w.dictionary).read_text()) if w.dictionary else {}
    return WordUnits(fitted.get("dictionary", []), w.hash_size, w.ids_per_trigram,
                     w.lowercase_ids, w.seed, fitted.get("spelling"))


def prepare_tfree(config: ModelConfig, data: TrainingData | None) -> ModelConfig:
    """Build the dictionary from the train split (cached by corpus and size)."""
    w = config.words
    if data is None or w.dictionary:
        return config
    store = data.store
    path = cache_dir() / "words" / f"{store.meta['sha256'][:16]}-{w.dict_size}.json"
    if not path.is_file():
        segments = store.segments("train")
        documents = (bytes(store.data[s:s + n]) for s, n in
                     zip(segments.starts, segments.lengths, strict=True))
        fitted = fit_dictionary(documents, w.dict_size, data.progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(fitted))
    return replace(config, words=replace(w, dictionary=str(path)))


@dataclass
class WordState:
    layers: list
    position: int = 0


class TFreeLM(nn.Module):
    """T-Free over any untok backbone, satisfying the model protocol (units: words)."""

    def __init__(self, config: ModelConfig, units: WordUnits | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.units = units or tfree_units(c)
        v = c.words.hash_size
        self.embed = nn.EmbeddingBag(v, c.dim, mode="sum")
        self.blocks = make_stack(c.backbone, dim=c.dim, num_layers=c.num_layers,
                                 num_heads=c.num_heads, hidden=c.hidden_dim, eps=c.norm_eps,
                                 dropout=c.dropout, capacity=c.context,
                                 rope=Rope(c.head_dim, c.rope_base, 2 * c.context))
        self.norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.head = nn.Linear(c.dim, v, bias=False)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.escape_bias = nn.Parameter(torch.zeros(()))
        self.nll_loss = False  # trained by the multi-label loss; bits come from scores
        self._dictionary: tuple | None = None

    def tie_weights(self) -> None:
        pass

    @torch.no_grad()
    def init_weights(self) -> None:
        init_standard(self)
        nn.init.normal_(self.embed.weight, std=0.02 / math.sqrt(8 * self.config.words
                                                                .ids_per_trigram))
        self.log_temperature.zero_()
        self.escape_bias.zero_()
        init_residuals(self.blocks, self.config.num_layers)

    # -- words to vectors and back ---------------------------------------------------------

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Long[B, T] word ids -> Float[B, T, D]: the sum of each word's code rows."""
        codes = [self.units.code(int(i)).ravel() for i in ids.flatten().tolist()]
        lengths = torch.tensor([len(c) for c in codes])
        flat = torch.from_numpy(np.concatenate(codes)).to(ids.device)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]]).to(ids.device)
        return self.embed(flat, offsets).view(*ids.shape, -1)

    def _logits(self, x: torch.Tensor, layers: list | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        h = self.blocks(x) if layers is None else self.blocks.step(x, layers, positions)
        return self.head(self.norm(h))  # (B, T, v)

    def dictionary(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The dictionary's sparse pattern (Float[D, v] CSR, ``edge_weight`` on the ids of
        a word's first and last trigram, each row scaled by ``1/|w| + 1/(v - |w|)``) and
        ``1 / (v - |w|)`` (Float[D]): what :meth:`word_logits` needs."""
        cached = self._dictionary
        if cached is None or cached[0].device != device:
            rows, cols, vals = [], [], []
            edge = self.config.words.edge_weight
            for d in range(self.units.dict_size):
                code = self.units.code(d)
                weight = np.ones(code.shape)
                if not is_special(self.units.words[d]) and len(code) > 1:
                    weight[[0, -1]] = edge
                ids, first = np.unique(code.ravel(), return_index=True)
                rows.append(np.full(len(ids), d))
                cols.append(ids)
                vals.append(weight.ravel()[first])
            index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))
            values = torch.from_numpy(np.concatenate(vals)).float()
            shape = (self.units.dict_size, self.config.words.hash_size)
            sizes = torch.zeros(shape[0]).index_add_(0, index[0], values)
            outside = (shape[1] - sizes).clamp(min=1)
            # s_w = inside / |w| - (total - inside) / (v - |w|): fold 1/|w| + 1/(v - |w|)
            # into the pattern, so one sparse product and one outer product give s
            fold = (1 / sizes + 1 / outside)[index[0]]
            pattern = torch.sparse_coo_tensor(index, values * fold, shape,
                                              check_invariants=True)
            with warnings.catch_warnings():  # CSR is "beta", and 60x faster than COO here
                warnings.simplefilter("ignore", UserWarning)
                csr = pattern.coalesce().to_sparse_csr()
            cached = (csr.to(device), (1 / outside).to(device))
            self._dictionary = cached
        return cached

    def word_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Float[N, v] head logits -> Float[N, D + 1]: the dictionary's scaled scores and
        the escape (last)."""
        p = torch.sigmoid(logits.float())
        pattern, per_outside = self.dictionary(p.device)
        out = p.new_empty(p.shape[0], pattern.shape[0] + 1)
        score = out[:, :-1]
        score.copy_(torch.sparse.mm(pattern, p.T).T)  # (N, D): folded inside sums
        score.sub_(torch.outer(p.sum(-1), per_outside))  # minus the mean outside
        scale = 20.0 * self.log_temperature.exp()
        if torch.is_grad_enabled():  # calibration: the temperature and escape learn
            return torch.cat([scale * score, self.escape_bias.expand(p.shape[0], 1)], -1)
        score.mul_(scale)
        out[:, -1] = self.escape_bias
        return out

    # -- the protocol ----------------------------------------------------------------------

    def forward(self, ids: torch.Tensor) -> WordScores:
        return WordScores(self._logits(self._embed(ids)), self)

    def loss(self, ids: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted binary cross-entropy against the next word's id set (positives gathered
        from indices; no dense target), plus the calibration of temperature and escape."""
        logits = self._logits(self._embed(ids)).flatten(0, 1)  # (N, v)
        targets = targets.flatten()
        keep = targets != self.units.pad
        if mask is not None:
            keep &= mask.flatten()
        rows, cols = self._positives(targets, keep)
        pos = logits[rows, cols]
        weight = self.config.words.pos_weight
        per_row = F.softplus(logits).sum(-1)[keep].sum() - F.softplus(pos).sum() + \
            weight * F.softplus(-pos).sum()
        count = keep.sum().clamp(min=1)
        bce = LOSS_SCALE * per_row / (count * logits.shape[-1])
        return bce + self._calibration(logits.detach(), targets, keep)

    def _positives(self, targets: torch.Tensor, keep: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = [], []
        for row in torch.nonzero(keep)[:, 0].tolist():
            ids = np.unique(self.units.code(int(targets[row])))
            rows.append(np.full(len(ids), row))
            cols.append(ids)
        if not rows:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        device = targets.device
        return (torch.from_numpy(np.concatenate(rows)).to(device),
                torch.from_numpy(np.concatenate(cols)).to(device))

    def _calibration(self, logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor
                     ) -> torch.Tensor:
        rows = torch.nonzero(keep)[:, 0][:CALIBRATION_POSITIONS]
        if rows.numel() == 0:
            return logits.new_zeros(())
        wanted = targets[rows].clamp(max=self.units.dict_size)  # escape for other words
        return F.cross_entropy(self.word_logits(logits[rows]), wanted)

    def new_state(self, batch_size: int) -> WordState:
        weight = self.norm.weight
        return WordState(self.blocks.new_state(batch_size, weight.device, weight.dtype))

    def step(self, state: WordState, ids: torch.Tensor) -> tuple[WordScores, WordState]:
        positions = torch.arange(state.position, state.position + ids.shape[1],
                                 device=ids.device)
        logits = self._logits(self._embed(ids), state.layers, positions)
        self.blocks.advance(state.layers, ids.shape[1])
        state.position += ids.shape[1]
        return WordScores(logits, self), state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_byte(self) -> float:
        """Training FLOPs per word: 6 x matmul weights (the head included) + mixing."""
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6.0 * matmul + self.blocks.mixing_flops(self.config.context)


class WordScores(Scores):
    """Next-word scores: head logits Float[..., v] and the model that turns them into a
    distribution over the dictionary, the escape and spelled words."""

    def __init__(self, logits: torch.Tensor, model: TFreeLM) -> None:
        self.logits, self.model = logits, model
        self._log_probs: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape[:-1]

    def __getitem__(self, index) -> WordScores:
        return WordScores(self.logits[index], self.model)

    def _word_log_probs(self) -> torch.Tensor:
        """log P over the dictionary and the escape, Float[N, D + 1] (computed once)."""
        if self._log_probs is None:
            flat = self.logits.reshape(-1, self.logits.shape[-1])
            self._log_probs = F.log_softmax(self.model.word_logits(flat), dim=-1)
        return self._log_probs

    def log_prob(self, targets: torch.Tensor) -> torch.Tensor:
        units = self.model.units
        lp = self._word_log_probs()
        flat = targets.flatten().to(lp.device)
        known = flat < units.dict_size
        out = lp.gather(1, flat.clamp(max=units.dict_size)[:, None])[:, 0]
        spelling = units.spelling_logp()
        for row in torch.nonzero(~known & (flat < units.num_content))[:, 0].tolist():
            data = np.frombuffer(word_bytes(units.words[int(flat[row])]), dtype=np.uint8)
            path = np.concatenate([[END], data.astype(np.int64), [END]])
            out[row] = out[row] + float(spelling[path[:-1], path[1:]].sum())
        out = out.masked_fill(flat >= units.num_content, 0.0)
        return out.reshape(targets.shape)

    def choose(self, pick: Pick) -> torch.Tensor:
        units = self.model.units
        chosen = pick(self._word_log_probs())
        for row in torch.nonzero(chosen == units.dict_size)[:, 0].tolist():
            chosen[row] = units.id_of(self._spell(pick))
        return chosen.reshape(self.shape)

    def _spell(self, pick: Pick) -> str:
        """A word outside the dictionary, byte by byte from the spelling model."""
        logp = torch.from_numpy(self.model.units.spelling_logp()).float()
        out, previous = [], END
        for _ in range(MAX_SPELLING):
            byte = int(pick(logp[previous][None])[0])
            if byte == END:
                break
            out.append(byte)
            previous = byte
        return bytes(out).decode("utf-8", errors="surrogateescape") or "\udc80"


def validate_tfree(c: ModelConfig) -> None:
    c.words.validate()
    c.require_defaults(("patching", "local"), "applies to BLT models only")
    c.require_defaults(("unit", "embedding", "attention", "head"), "an option of the flat "
                       "family; a T-Free model reads words through hashed trigrams")


TINY = {"dim": 32, "num_layers": 2, "num_heads": 2, "context": 24,
        "words": {"hash_size": 512, "ids_per_trigram": 4, "lowercase_ids": 1}}
register(Family(
    name="tfree", model=TFreeLM, units=tfree_units, validate=validate_tfree,
    prepare=prepare_tfree, capabilities=lambda c: Capabilities(compiled_decoding=False),
    description="words as hashed trigram codes, a multi-label head and a dictionary",
    summary=lambda c: f"{shape_summary('tfree', c, heads=c.backbone == 'transformer')}  "
                      f"(words; v {c.words.hash_size}, m {c.words.ids_per_trigram}, "
                      f"dictionary {c.words.dict_size})",
    examples={"transformer": TINY, "mmfree": {**TINY, "backbone": "mmfree"}}))
