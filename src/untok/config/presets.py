"""Named presets: partial sections applied over the defaults (``untok presets`` lists them)."""

from __future__ import annotations

from typing import Any

from untok.config.schema import suggest
from untok.errors import ConfigError

# Named presets: partial sections applied over the defaults. Parameter counts are for the
# byte vocabulary; the token-free head and embedding are tied.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {  # unit tests: trains in a fraction of a second
        "model": {"dim": 32, "num_layers": 2, "num_heads": 2, "context": 32},
        "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 10, "eval_bytes": 2048,
                  "log_every": 1},
    },
    "demo": {  # `untok demo`: what learned fastest on the stdlib corpus in 3 CPU-minutes
        # (bench/demo.py): 2 layers of 128 plus hash 3-5-gram tables (6.3M of its 6.8M
        # parameters, cheap lookups) beat 4 layers, 192 wide, and larger contexts
        "model": {"dim": 128, "num_layers": 2, "num_heads": 4, "context": 128,
                  "embedding": {"ngrams": [3, 4, 5], "buckets": 16384}},
        "train": {"batch_size": 32, "lr": 3e-3, "warmup_steps": 50, "eval_every": 200,
                  "eval_bytes": 65536},
    },
    "small": {  # CPU demos: ~4.8M parameters
        "model": {"dim": 256, "num_layers": 6, "num_heads": 8, "context": 256},
        "train": {"batch_size": 32, "lr": 2e-3, "warmup_steps": 100},
    },
    "base": {  # ~25M parameters; a GPU or a patient CPU
        "model": {"dim": 512, "num_layers": 8, "num_heads": 8, "context": 512},
        "train": {"batch_size": 32, "lr": 1e-3, "warmup_steps": 500, "eval_every": 1000},
    },
    "large": {  # ~120M parameters; GPUs
        "model": {"dim": 768, "num_layers": 16, "num_heads": 12, "context": 1024},
        "train": {"batch_size": 64, "lr": 6e-4, "warmup_steps": 2000, "eval_every": 2000,
                  "precision": "auto"},
    },
    "entropy-small": {  # the entropy model that drives BLT's entropy patching: tiny, fast
        "model": {"dim": 128, "num_layers": 2, "num_heads": 4, "context": 128},
        "train": {"batch_size": 32, "lr": 3e-3, "warmup_steps": 50, "eval_every": 200,
                  "eval_bytes": 65536},
    },
    "blt-tiny": {  # unit tests
        "model": {"family": "blt", "dim": 32, "num_layers": 2, "num_heads": 2, "context": 48,
                  "embedding": {"ngrams": [3, 4], "buckets": 64},
                  "local": {"dim": 16, "num_heads": 2, "encoder_layers": 1,
                            "decoder_layers": 1, "window": 8, "slots": 2}},
        "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 10, "eval_bytes": 2048,
                  "log_every": 1},
    },
    "blt-small": {  # CPU: global 192 x 4 over patches, local 96-wide byte layers, 1 + 1
        # (the best of bench/blt_shapes.py at 10 minutes; the global model holds half the
        # training FLOPs per byte)
        "model": {"family": "blt", "dim": 192, "num_layers": 4, "num_heads": 6,
                  "context": 512, "embedding": {"ngrams": [3, 4, 5, 6, 7, 8]},
                  "local": {"dim": 96, "num_heads": 4, "encoder_layers": 1,
                            "decoder_layers": 1, "window": 128, "slots": 2}},
        "train": {"batch_size": 16, "lr": 2e-3, "warmup_steps": 100},
    },
    "blt-base": {  # GPU: global 768 x 12, local 384-wide
        "model": {"family": "blt", "dim": 768, "num_layers": 12, "num_heads": 12,
                  "context": 2048, "embedding": {"ngrams": [3, 4, 5, 6, 7, 8],
                                                 "buckets": 65536},
                  "local": {"dim": 384, "num_heads": 6, "encoder_layers": 1,
                            "decoder_layers": 4, "window": 512, "slots": 2}},
        "train": {"batch_size": 32, "lr": 8e-4, "warmup_steps": 1000, "eval_every": 1000,
                  "precision": "auto"},
    },
    "tfree-tiny": {  # unit tests: T-Free words over a tiny transformer
        "model": {"family": "tfree", "dim": 32, "num_layers": 2, "num_heads": 2, "context": 32,
                  "words": {"hash_size": 1024, "ids_per_trigram": 4, "lowercase_ids": 1,
                            "dict_size": 512}},
        "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 10, "eval_bytes": 2048,
                  "log_every": 1},
    },
    "tfree-small": {  # CPU: 256 x 4 over words (128 words are ~450 bytes of text); with
        # the order-5 spelling prior a 4,096-word dictionary beat 8,192 (faster softmax)
        "model": {"family": "tfree", "dim": 256, "num_layers": 4, "num_heads": 8,
                  "context": 128, "words": {"hash_size": 4096, "ids_per_trigram": 4,
                                            "lowercase_ids": 1, "dict_size": 4096,
                                            "word_bias": True}},
        "train": {"batch_size": 4, "lr": 2e-3, "warmup_steps": 100},
    },
    "tfree-base": {  # GPU: 768 x 12 over 1024 words
        "model": {"family": "tfree", "dim": 768, "num_layers": 12, "num_heads": 12,
                  "context": 1024, "words": {"hash_size": 16384, "dict_size": 65536,
                                             "word_bias": True}},
        "train": {"batch_size": 32, "lr": 8e-4, "warmup_steps": 1000, "eval_every": 1000,
                  "precision": "auto"},
    },
    "tokun-4": {  # chunk autoencoder: 4 characters (3 bytes each) -> one 256-wide vector
        "model": {"family": "tokun", "unit": "codepoint", "context": 256,
                  "chunks": {"levels": [4], "dim": 256}},
        "train": {"batch_size": 16, "lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 100,
                  "eval_every": 200, "eval_bytes": 65536},
    },
    "tokun-16": {  # 16 characters -> one 256-wide vector, merged in one level; 6% of
        # the training characters random (rare Han characters came back wrong without)
        "model": {"family": "tokun", "unit": "codepoint", "context": 256,
                  "chunks": {"levels": [16], "dim": 256, "random_chars": 0.06}},
        "train": {"batch_size": 16, "lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 100,
                  "eval_every": 200, "eval_bytes": 65536},
    },
    "tokun-4x4": {  # 16 characters -> one 256-wide vector, merged 4 then 4 (10-minute
        # multilingual runs: lr 2e-2 94.99%, 1e-2 98.02%, 5e-3 98.59 and 99.47%, 2.5e-3 99.98%)
        "model": {"family": "tokun", "unit": "codepoint", "context": 256,
                  "chunks": {"levels": [4, 4], "dim": 256}},
        "train": {"batch_size": 16, "lr": 2.5e-3, "weight_decay": 0.0, "warmup_steps": 100,
                  "eval_every": 200, "eval_bytes": 65536},
    },
    "tokun-lm-tiny": {  # unit tests
        "model": {"family": "tokun-lm", "unit": "codepoint", "dim": 32, "num_layers": 2,
                  "num_heads": 2, "context": 32,
                  "chunks": {"levels": [4], "dim": 32, "byte_dim": 16, "decoder_dim": 32}},
        "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 10, "eval_bytes": 2048,
                  "log_every": 1},
    },
    "tokun-lm-small": {  # CPU: 256 x 4 over chunks of 4 characters; a 192-wide sequence
        # decoder over the last 64 characters with hash 2-4-grams (10-minute multilingual
        # runs, docs/tokun.md: 2.128 bpb; the chunk decoder 2.489, without n-grams 2.364)
        "model": {"family": "tokun-lm", "unit": "codepoint", "dim": 256, "num_layers": 4,
                  "num_heads": 8, "context": 256,
                  "embedding": {"ngrams": [2, 3, 4], "buckets": 8192},
                  "chunks": {"levels": [4], "dim": 256, "decoder_dim": 192,
                             "decoder_window": 64}},
        "train": {"batch_size": 8, "lr": 2e-3, "warmup_steps": 30},
    },
    "mmfree-tiny": {  # unit tests
        "model": {"backbone": "mmfree", "dim": 32, "num_layers": 2, "context": 32},
        "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 10, "eval_bytes": 2048,
                  "log_every": 1},
    },
    "mmfree-small": {  # CPU: the `small` width and depth, ternary
        "model": {"backbone": "mmfree", "dim": 256, "num_layers": 6, "context": 256},
        "train": {"batch_size": 32, "lr": 3e-3, "warmup_steps": 100},
    },
    "mmfree-base": {  # GPU
        "model": {"backbone": "mmfree", "dim": 768, "num_layers": 12, "context": 1024},
        "train": {"batch_size": 32, "lr": 1.5e-3, "warmup_steps": 1000, "eval_every": 1000,
                  "precision": "auto"},
    },
}



def preset(name: str) -> dict[str, dict[str, Any]]:
    """The overrides of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'{suggest(name, PRESETS)}; "
                          f"presets: {', '.join(PRESETS)}")
    return PRESETS[name]
