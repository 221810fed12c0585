"""The T-Free family: words as sums of hashed trigram ids, a multi-label head, and an
honest likelihood over a dictionary, the context's own words and spelled-out words.

    text -> words (untok.words) -> per word: the sum of the embedding rows of its trigram
    ids (untok.trigrams; no per-word table) -> a backbone over words -> a ``hash_size``-wide
    head, trained with binary cross-entropy against the next word's id set, plus one
    escape logit

Scoring a word w: ``s_w = mean(p inside w's ids) - mean(p outside)`` with p = sigmoid(head).
The next word is drawn from a softmax over ``exp(t) s_w`` for the words of the dictionary
D, the *context words* (words outside D already seen in this sequence: names and rare
words repeat, as the prompt's words do in generation) and one *escape* entry (its own
logit); an escaped word costs its bytes under the speller (:mod:`untok.nn.speller`:
a GRU from the position's hidden state on top of the order-k spelling prior of
:mod:`untok.word_units`). The candidates at position t depend on words up to t only, so
the code length of a text is exact and causal and its bits per byte compare with every
other untok model.

Training adds the cross-entropy of that softmax (on ``words.softmax_positions``
positions, all by default) to the multi-label loss: it is the code length evaluation
measures, and on enwik8 it takes a 1.5-minute CPU run from 3.65 to 2.68 bpb (the
multi-label loss alone leaves the scores' scale and ranking to a fitted temperature).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from untok.config import ModelConfig
from untok.errors import ConfigError
from untok.files import cache_dir, write_atomic
from untok.models.base import init_residuals, init_standard
from untok.models.registry import Capabilities, Family, TrainingData, register, shape_summary
from untok.nn.attention import Rope
from untok.nn.pattern_scores import pattern_scores, with_outside
from untok.nn.speller import Speller
from untok.nn.stacks import make_stack
from untok.scores import Pick, Scores
from untok.word_units import END, WordUnits, fit_dictionary
from untok.words import is_special

MAX_SPELLING = 64  # bytes of a sampled escape word at most


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
    key = f"{store.meta['sha256'][:16]}-{w.dict_size}-order{w.spelling_order}"
    path = cache_dir() / "words-v3" / f"{key}.json"
    if not path.is_file():
        segments = store.segments("train")
        documents = (bytes(store.data[s:s + n]) for s, n in
                     zip(segments.starts, segments.lengths, strict=True))
        fitted = fit_dictionary(documents, w.dict_size, data.progress, w.spelling_order)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(fitted))
    return replace(config, words=replace(w, dictionary=str(path)))



@dataclass
class WordState:
    """Incremental decoding: the backbone's caches, the next position and, per row, the
    context words seen so far (ids outside the dictionary, first seen first)."""

    layers: list
    position: int = 0
    seen: list[list[int]] = field(default_factory=list)


class TFreeLM(nn.Module):
    """T-Free over any untok backbone, satisfying the model protocol (units: words)."""

    def __init__(self, config: ModelConfig, units: WordUnits | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.units = units or tfree_units(c)
        v = c.words.hash_size
        self.embed = nn.EmbeddingBag(v, c.dim, mode="sum")
        self.blocks = make_stack(c.backbone, dim=c.dim, num_layers=c.num_layers,
                                 num_heads=c.num_heads, kv_heads=c.kv_heads,
                                 hidden=c.hidden_dim, eps=c.norm_eps,
                                 dropout=c.dropout, capacity=c.context,
                                 rope=Rope(c.head_dim, c.rope_base, 2 * c.context))
        self.norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.head = nn.Linear(c.dim, v + 1, bias=False)  # v word outputs, then the escape
        self.speller = Speller(c.dim)  # the bytes of escaped words
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.escape_bias = nn.Parameter(torch.zeros(()))
        self.word_bias = nn.Parameter(torch.zeros(self.units.dict_size, 1)) \
            if c.words.word_bias else None  # (D, 1): each dictionary word's log prior
        self.nll_loss = False  # trained by the multi-label loss; bits come from scores
        self._dictionary: tuple | None = None

    def tie_weights(self) -> None:
        pass

    @torch.no_grad()
    def init_weights(self) -> None:
        init_standard(self)
        nn.init.normal_(self.embed.weight, std=0.02 / math.sqrt(8 * self.config.words
                                                                .ids_per_trigram))
        for learned in (self.log_temperature, self.escape_bias, self.word_bias):
            if learned is not None:
                learned.zero_()
        init_residuals(self.blocks, self.config.num_layers)

    # -- words to vectors and back ---------------------------------------------------------

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Long[B, T] word ids -> Float[B, T, D]: the sum of each word's code rows."""
        codes = [self.units.code(int(i)).ravel() for i in ids.flatten().tolist()]
        lengths = torch.tensor([len(c) for c in codes])
        flat = torch.from_numpy(np.concatenate(codes)).to(ids.device)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]]).to(ids.device)
        return self.embed(flat, offsets).view(*ids.shape, -1)

    def _outputs(self, x: torch.Tensor, layers: list | None = None,
                 positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states Float[B, T, D] (normalised) and the head's logits
        Float[B, T, v + 1]."""
        h = self.blocks(x) if layers is None else self.blocks.step(x, layers, positions)
        h = self.norm(h)
        return h, self.head(h)

    def _extras(self, ids: torch.Tensor, seen: list[list[int]] | None = None
                ) -> tuple[torch.Tensor, list[list[int]]]:
        """The context words each position may predict besides the dictionary: words
        outside it among the row's inputs so far (``seen`` before ``ids``, then
        ``ids[b, :t + 1]``). Long[B, T, E] word ids, -1 where none (yet); and ``seen``
        extended by ``ids``."""
        rows = []
        for b, row in enumerate(ids.tolist()):
            known = list(seen[b]) if seen else []
            first = [0] * len(known)
            for t, i in enumerate(row):
                if self.units.is_extra(i) and i not in known:
                    known.append(i)
                    first.append(t)
            rows.append((known, first))
        out = torch.full((*ids.shape, max((len(k) for k, _ in rows), default=0)), -1)
        steps = torch.arange(ids.shape[1])[:, None]
        for b, (known, first) in enumerate(rows):
            if known:
                available = steps >= torch.tensor(first)[None, :]  # (T, e)
                out[b, :, :len(known)] = torch.tensor(known).where(available, -1)
        return out.to(ids.device), [known for known, _ in rows]

    def _patterns(self, words: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The scoring pattern of some words: the (row, id) pairs Long[2, nnz] of their
        codes, each pair's weight (``edge_weight`` on the ids of a word's first and last
        trigram) scaled by ``1/|w| + 1/(v - |w|)``, and ``1 / (v - |w|)`` Float[len]:
        ``s_w = inside / |w| - (total - inside) / (v - |w|)`` is one product and one outer
        product with these."""
        rows, cols, vals = [], [], []
        edge = self.config.words.edge_weight
        for r, d in enumerate(words):
            code = self.units.code(d)
            weight = np.ones(code.shape)
            if not is_special(self.units.words[d]) and len(code) > 1:
                weight[[0, -1]] = edge
            ids, first = np.unique(code.ravel(), return_index=True)
            rows.append(np.full(len(ids), r))
            cols.append(ids)
            vals.append(weight.ravel()[first])
        index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))
        values = torch.from_numpy(np.concatenate(vals)).float()
        sizes = torch.zeros(len(words)).index_add_(0, index[0], values)
        outside = (self.config.words.hash_size - sizes).clamp(min=1)
        return index, values * (1 / sizes + 1 / outside)[index[0]], 1 / outside

    def dictionary(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The dictionary's patterns with the outside means (:func:`with_outside`): CSR
        Float[D, v + 1] and its transpose, what :func:`pattern_scores` takes."""
        cached = self._dictionary
        if cached is None or cached[0].device != device:
            index, values, per_outside = self._patterns(list(range(self.units.dict_size)))
            matrices = with_outside(index, values, per_outside, self.config.words.hash_size)
            cached = tuple(m.to(device) for m in matrices)
            self._dictionary = cached
        return cached

    def word_logits(self, logits: torch.Tensor, extras: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float[N, v + 1] head logits and Long[N, E] context words -> the scaled scores of
        the candidates in three parts: the dictionary Float[D, N] (words first: the layout
        the sparse product writes), the context words Float[N, E] (-inf where none) and
        the escape Float[N, 1]. In fp32 under any autocast: each score sums ~m x 3 w
        probabilities, and the sparse kernels have no bf16 version."""
        with torch.autocast(logits.device.type, enabled=False):
            return self._word_logits(logits, extras)

    def _word_logits(self, logits: torch.Tensor, extras: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(logits[:, :-1].float())
        scale = 20.0 * self.log_temperature.exp()
        escape = (logits[:, -1:].float() + self.escape_bias)
        score = pattern_scores(p, scale, *self.dictionary(p.device))  # (D, N)
        if self.word_bias is not None:
            score = score + self.word_bias
        if not extras.shape[-1]:
            return score, p.new_zeros(len(p), 0), escape
        total = p.sum(-1)
        unique, where = extras.clamp(min=0).unique(return_inverse=True)
        index, values, per_out = self._patterns(unique.tolist())
        dense = torch.zeros(len(unique), p.shape[-1], device=p.device)
        dense.index_put_((index[0].to(p.device), index[1].to(p.device)),
                         values.to(p.device), accumulate=True)
        own = p @ dense.T - torch.outer(total, per_out.to(p.device))  # (N, U)
        own = (own.gather(1, where) * scale).masked_fill(extras < 0, -torch.inf)
        return score, own, escape

    # -- the protocol ----------------------------------------------------------------------

    def forward(self, ids: torch.Tensor) -> WordScores:
        return WordScores(*self._outputs(self._embed(ids)), self, self._extras(ids)[0])

    def loss(self, ids: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """The word softmax's cross-entropy plus ``multilabel_weight`` x the weighted binary
        cross-entropy against the next word's id set, a mean over the v outputs (positives
        gathered from indices; no dense target)."""
        hidden, logits = self._outputs(self._embed(ids))  # (B, T, D), (B, T, v + 1)
        keep = targets != self.units.pad
        if mask is not None:
            keep &= mask
        softmax = self._softmax_loss(hidden, logits, ids, targets, keep)
        w = self.config.words
        if not w.multilabel_weight:
            return softmax
        words = logits[..., :-1].flatten(0, 1)  # (N, v)
        rows, cols = self._positives(targets.flatten(), keep.flatten())
        pos = words[rows, cols]
        per_row = F.softplus(words).sum(-1)[keep.flatten()].sum() - F.softplus(pos).sum() \
            + w.pos_weight * F.softplus(-pos).sum()
        return softmax + w.multilabel_weight * per_row / (keep.sum().clamp(min=1) * w.hash_size)

    def _positives(self, targets: torch.Tensor, keep: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (row, id) pairs of the kept targets' multi-label positives, Long[nnz] each."""
        kept = torch.nonzero(keep)[:, 0].tolist()
        words = targets.tolist()
        cols = [self.units.distinct_ids(words[row]) for row in kept]
        if not kept:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        rows = np.repeat(np.array(kept, dtype=np.int64), [len(c) for c in cols])
        device = targets.device
        return (torch.from_numpy(rows).to(device),
                torch.from_numpy(np.concatenate(cols)).to(device))

    def _softmax_loss(self, hidden: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
                      targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The code length evaluation measures (the word softmax's cross-entropy, plus the
        speller's for escaped words up to ``MAX_SPELLING`` bytes) on the first
        ``words.softmax_positions`` positions, whole rows (all when 0)."""
        wanted = self.config.words.softmax_positions
        r = max(1, wanted // ids.shape[1]) if wanted else ids.shape[0]
        scores = WordScores(hidden[:r], logits[:r], self, self._extras(ids[:r])[0])
        keep = keep[:r]
        log_prob, escaped = scores.candidate_log_prob(targets[:r])
        rows = [row for row in torch.nonzero((escaped & keep).flatten())[:, 0].tolist()
                if len(self.units.bytes_of(int(targets[:r].flatten()[row]))) <= MAX_SPELLING]
        spelled = scores.spelling_log_prob(rows, targets[:r].flatten()[rows]).sum() \
            if rows else log_prob.new_zeros(())
        return -((log_prob * keep).sum() + spelled) / keep.sum().clamp(min=1)

    def spelling_log_prob(self, context: torch.Tensor, words: list[int]) -> torch.Tensor:
        """log P of each word's bytes under the speller given its context vector (nats),
        Float[N]."""
        spellings = [self.units.bytes_of(i) for i in words]
        length = max(len(b) for b in spellings) + 1
        prior = torch.from_numpy(self.units.spelling.log_table(spellings, length))
        return self.speller.log_prob(context, spellings, prior.to(context.device))

    def new_state(self, batch_size: int) -> WordState:
        weight = self.norm.weight
        return WordState(self.blocks.new_state(batch_size, weight.device, weight.dtype),
                         seen=[[] for _ in range(batch_size)])

    def step(self, state: WordState, ids: torch.Tensor) -> tuple[WordScores, WordState]:
        positions = torch.arange(state.position, state.position + ids.shape[1],
                                 device=ids.device)
        hidden, logits = self._outputs(self._embed(ids), state.layers, positions)
        self.blocks.advance(state.layers, ids.shape[1])
        state.position += ids.shape[1]
        extras, state.seen = self._extras(ids, state.seen)
        return WordScores(hidden, logits, self, extras), state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_byte(self) -> float:
        """Training FLOPs per word: 6 x matmul weights (the head included) + mixing."""
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6.0 * matmul + self.blocks.mixing_flops(self.config.context)


class WordScores(Scores):
    """Next-word scores: the hidden states Float[..., D] (the speller's context), head
    logits Float[..., v + 1], the context words Long[..., E] each position may also
    predict, and the model that turns them into a distribution over the dictionary, the
    context words, the escape and spelled words."""

    def __init__(self, hidden: torch.Tensor, logits: torch.Tensor, model: TFreeLM,
                 extras: torch.Tensor) -> None:
        self.hidden, self.logits, self.model = hidden, logits, model
        self.extras = extras.expand(*logits.shape[:-1], extras.shape[-1])
        self._log_probs: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape[:-1]

    def __getitem__(self, index) -> WordScores:
        return WordScores(self.hidden[index], self.logits[index], self.model,
                          self.extras[index])

    def _candidates(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The candidates' scores (see :meth:`TFreeLM.word_logits`), N positions."""
        flat = self.logits.reshape(-1, self.logits.shape[-1])
        return self.model.word_logits(flat, self.extras.reshape(flat.shape[0], -1))

    def _word_log_probs(self) -> torch.Tensor:
        """log P over the dictionary, the context words and the escape, Float[N, D + E + 1]
        (computed once)."""
        if self._log_probs is None:
            words, own, escape = self._candidates()
            self._log_probs = F.log_softmax(torch.cat([words.T, own, escape], -1), dim=-1)
        return self._log_probs

    def candidate_log_prob(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log P of each target's candidate (a dictionary word, a context word or the
        escape), Float like ``targets`` (0 at BOS/EOS/PAD), and whether it is escaped.
        Only the targets' scores and each position's normaliser are computed: no
        distribution over every candidate."""
        d = self.model.units.dict_size
        flat = targets.flatten().to(self.logits.device)
        extras = self.extras.reshape(flat.shape[0], -1)
        match = (extras == flat[:, None]) & (flat[:, None] >= d)  # (N, E)
        other = torch.cat([match, ~match.any(-1, keepdim=True)], -1).int().argmax(-1)
        escape = d + extras.shape[-1]
        column = torch.where(flat < d, flat, d + other)  # a context word, or the escape
        if self._log_probs is not None:
            out = self._log_probs.gather(1, column[:, None])[:, 0]
        else:
            words, own, escape_score = self._candidates()
            normaliser = torch.logsumexp(torch.stack(
                [words.logsumexp(0), own.logsumexp(-1), escape_score[:, 0]]), 0)
            in_dictionary = words.gather(0, column.clamp(max=d - 1)[None, :])[0]
            picked = torch.where(column < d, in_dictionary, escape_score[:, 0])
            if extras.shape[-1]:
                in_context = (column >= d) & (column < escape)
                context = own.gather(1, (column - d).clamp(0, extras.shape[-1] - 1)[:, None])
                picked = torch.where(in_context, context[:, 0], picked)
            out = picked - normaliser
        special = flat >= self.model.units.num_content
        out = out.masked_fill(special, 0.0)
        return out.reshape(targets.shape), ((column == escape) & ~special).reshape(
            targets.shape)

    def spelling_log_prob(self, rows: list[int], words: torch.Tensor) -> torch.Tensor:
        """log P of the bytes of ``words`` (Long[N]) spelled at flat positions ``rows``."""
        context = self.hidden.reshape(-1, self.hidden.shape[-1])[rows]
        return self.model.spelling_log_prob(context, words.tolist())

    def log_prob(self, targets: torch.Tensor) -> torch.Tensor:
        out, escaped = self.candidate_log_prob(targets)
        flat = out.flatten().clone()
        rows = torch.nonzero(escaped.flatten())[:, 0].tolist()
        if rows:
            flat[rows] += self.spelling_log_prob(rows, targets.flatten()[rows].to(flat.device))
        return flat.reshape(targets.shape)

    def _words(self, columns: torch.Tensor, escaped: int) -> torch.Tensor:
        """Candidate columns Long[N] -> word ids (``escaped`` for the escape)."""
        d = self.model.units.dict_size
        extras = self.extras.reshape(columns.shape[0], -1)
        context = extras.gather(1, (columns - d).clamp(0, max(extras.shape[-1] - 1, 0))
                                [:, None])[:, 0] if extras.shape[-1] else columns
        words = torch.where(columns < d, columns, context)
        return words.masked_fill(columns == d + extras.shape[-1], escaped)

    def greedy(self) -> torch.Tensor:
        """The most likely candidate (-1 where that is the escape)."""
        return self._words(self._word_log_probs().argmax(-1), -1).reshape(self.shape)

    def choose(self, pick: Pick) -> torch.Tensor:
        chosen = self._words(pick(self._word_log_probs()), -1)
        for row in torch.nonzero(chosen < 0)[:, 0].tolist():
            chosen[row] = self.model.units.id_of(self._spell(row, pick))
        return chosen.reshape(self.shape)

    def _spell(self, row: int, pick: Pick) -> str:
        """A word outside the dictionary, byte by byte from the speller at flat ``row``."""
        model = self.model
        context = self.hidden.reshape(-1, self.hidden.shape[-1])[row:row + 1]
        out, state = [], None
        for _ in range(MAX_SPELLING):
            prior = torch.from_numpy(np.log(model.units.spelling.probs(*out))).float()
            previous = torch.tensor([[out[-1] if out else END]], device=context.device)
            logp, state = model.speller.log_probs(context, previous,
                                                  prior.to(context.device)[None, None], state)
            byte = int(pick(logp[:, -1])[0])
            if byte == END:
                break
            out.append(byte)
        return bytes(out).decode("utf-8", errors="surrogateescape") or "\udc80"


def validate_tfree(c: ModelConfig) -> None:
    c.words.validate()
    c.require_defaults(("patching", "local"), "applies to BLT models only")
    c.require_defaults(("chunks",), "applies to tokun models only")
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
    examples={"transformer": TINY, "mmfree": {**TINY, "backbone": "mmfree",  # + word bias
                                              "words": {**TINY["words"], "word_bias": True}}}))
