"""The ``untok`` argument parser: subcommands, options and their checks."""

from __future__ import annotations

import argparse

from untok.cli.commands import (
    cmd_compress,
    cmd_data_entropies,
    cmd_data_info,
    cmd_data_ingest,
    cmd_decompress,
    cmd_demo,
    cmd_eval,
    cmd_export,
    cmd_patches,
    cmd_presets,
    cmd_tokun_decode,
    cmd_tokun_encode,
    cmd_train,
    cmd_words,
)
from untok.cli.decoding import cmd_chat, cmd_generate, cmd_serve
from untok.compression import (
    ADAPT_EVERY,
    ADAPT_LR,
    ADAPT_SCOPES,
    AUTO_COMPILE,
    DEFAULTS,
    MIN_CHUNK,
)
from untok.config import PRECISIONS

EPILOG = """examples:
  untok demo
  untok data ingest ~/books/ --glob '*.txt' -o books
  untok data info books
  untok train --data books --preset small --minutes 30 --out runs/books
  untok eval runs/books/best --data books --json
  untok generate runs/books/best --prompt "Once upon a time" --max-bytes 400
  untok train --resume runs/books/last --minutes 10
  untok compress notes.txt -m runs/books/best
  untok serve runs/books/best --port 8000
"""


def _add_force(p: argparse.ArgumentParser, what: str) -> None:
    """The one overwrite switch: every command that would replace an existing output
    refuses unless given -f/--force (--overwrite is the same switch)."""
    p.add_argument("-f", "--force", "--overwrite", dest="force", action="store_true",
                   help=what)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


# -- parser -------------------------------------------------------------------------------

def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=("standard", "adaptive"), default="standard",
                   help="adaptive: greedy when the next-unit entropy is below --low bits, "
                        "top-k between --low and --high, full sampling above --high")
    p.add_argument("--low", type=float, default=0.3,
                   help="adaptive sampler: entropy (bits) below which it decodes greedily")
    p.add_argument("--high", type=float, default=2.5,
                   help="adaptive sampler: entropy (bits) from which it samples everything")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=_nonnegative_int, default=0,
                   help="0 = off (adaptive sampler: k of its middle band, default 10)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass, 1 = off")
    p.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="byte store, text file or folder (ingested on the fly), "
                   "or 'stdlib' for the built-in corpus")
    p.add_argument("--preset", help="named preset (see 'untok presets')")
    p.add_argument("--recipe", help="TOML recipe (preset + overrides)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--steps", type=_positive_int, help="total optimizer steps for the run")
    p.add_argument("--bytes", type=_positive_int, help="total training bytes for the run")
    p.add_argument("--minutes", type=_positive_float, help="wall-clock budget of this call")
    p.add_argument("--out", help="run directory (default runs/<data name>)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (OUT/last)")
    p.add_argument("--init", metavar="CKPT", help="fine-tune: start a new run from this "
                   "checkpoint's model and weights (new optimizer and schedule)")
    _add_force(p, "replace an existing run in --out")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="autocast dtype: auto (bf16 on CUDA, else fp32), bf16, fp16 (with loss "
                   "scaling, for GPUs without bf16) or fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--log", choices=("tensorboard", "wandb"),
                   help="also send metrics to TensorBoard (OUT/tensorboard; extra [track]) "
                   "or Weights & Biases (pip install wandb)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=_positive_int,
                   help="train with N processes: relaunches this command through torchrun "
                        "(same as torchrun --standalone --nproc-per-node N -m untok train ...)")
    p.add_argument("--parallel", choices=("auto", "ddp", "fsdp"),
                   help="under torchrun: ddp (default) or fsdp (parameters sharded per block)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="with --parallel fsdp: keep parameters and optimizer state on the CPU")
    p.add_argument("--patching", choices=("entropy", "space", "fixed", "learned"),
                   help="BLT presets: how bytes are cut into patches")
    p.add_argument("--patch-size", type=_positive_int,
                   help="bytes per patch for --patching fixed (default 4)")
    p.add_argument("--entropy-model", metavar="CKPT",
                   help="byte model whose next-byte entropy drives --patching entropy "
                   "(train one with --preset entropy-small)")
    p.add_argument("--dict-size", type=_positive_int,
                   help="T-Free presets: the most frequent words of the train split that "
                        "the dictionary holds (model.words.dict_size)")


def _add_coding_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a file losslessly with a byte model",
                       description="Arithmetic-code FILE with the model's next-byte "
                       "probabilities. Decompressing needs the same checkpoint and the same "
                       "kind of device.")
    p.add_argument("file", help="file to compress (- = stdin)")
    p.add_argument("-m", "--model", help="checkpoint (or run) directory (default: the "
                   "general byte model shipped with untok)")
    p.add_argument("-o", "--out", help="output file (default FILE.utk; - = stdout)")
    p.add_argument("--chunk-size", type=_positive_int, default=DEFAULTS.chunk_size,
                   help="bytes per chunk, each coded from a fresh state (default: the file "
                   f"split evenly over --batch-size chunks, at least {MIN_CHUNK} bytes each)")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size,
                   help="chunks coded side by side as one stream, the unit that decodes on "
                        f"its own (default {DEFAULTS.batch_size}; 1: every chunk alone)")
    p.add_argument("--adapt-lr", type=float, default=DEFAULTS.adapt_lr,
                   help="keep training a copy of the model on the file as it is coded, with "
                        "this Adam learning rate (default: the scope's, " + ", ".join(
                            f"{scope} {lr:g}" for scope, lr in ADAPT_LR.items()) + "; 0 = off)")
    p.add_argument("--adapt-every", type=_positive_int, default=DEFAULTS.adapt_every,
                   help="bytes per row between adaptation steps (default: the scope's, " +
                   ", ".join(f"{scope} {every}" for scope, every in ADAPT_EVERY.items()) + ")")
    p.add_argument("--adapt-scope", choices=ADAPT_SCOPES, default=DEFAULTS.adapt_scope,
                   help="which weights adapt: tail (the last MLP and the head, from the "
                        "coding steps' own states: cheap), all, or the MLPs (each with a "
                        "forward and backward pass of its own); auto (default): tail where "
                        "the model has one, else all")
    p.add_argument("--window", type=_positive_int, default=DEFAULTS.window, metavar="N",
                   help="attend to the last N bytes only while coding (a transformer: "
                        f"cheaper steps; default {DEFAULTS.window}; N at least the model's "
                        "context: all of it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   default=DEFAULTS.compiled, help="code through the torch.compile'd one-byte "
                   "step: faster, after a one-off compile cached on disk (recorded: "
                   "decompressing compiles the same step; default: for files of "
                   f"{AUTO_COMPILE // 1024} KiB or more)")
    p.add_argument("--compare", action="store_true", help="also print the file's size under "
                   "gzip -9, bzip2 -9, xz -9e and zstd -19 (zstd: pip install zstandard)")
    _add_force(p, "overwrite the output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="restore a file made by untok compress",
                       description="Decode FILE.utk with the checkpoint that compressed it; "
                       "the output is written only once its SHA-256 checks out.")
    p.add_argument("file", help="compressed file (- = stdin)")
    p.add_argument("-m", "--model", help="checkpoint (or run) directory (default: the "
                   "shipped model, when the file was made with it)")
    p.add_argument("-o", "--out", help="output file (default FILE without .utk; - = stdout)")
    p.add_argument("--device", help="default: the kind of device the file was compressed on")
    _add_force(p, "overwrite the output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_decompress)


def build_parser() -> argparse.ArgumentParser:
    from untok.version import __version__

    parser = argparse.ArgumentParser(
        prog="untok", description="Train, evaluate and run language models over raw bytes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"untok {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train a small model on the built-in corpus, report, sample")
    p.add_argument("--minutes", type=_positive_float, default=3.0, help="training budget")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    _add_force(p, "replace an earlier demo run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="byte stores: ingest and inspect corpora")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("ingest", help="write files, folders, JSONL, CSV, Parquet or "
                            "stdin ('-') into a byte store")
    p.add_argument("sources", nargs="+", help="files, folders, saved HF datasets, or -")
    p.add_argument("-o", "--out", required=True, help="store name: writes OUT.bin/.idx/...")
    p.add_argument("--glob", help="only files in folders matching this pattern, e.g. '*.txt'")
    p.add_argument("--format", default="auto",
                   choices=("auto", "text", "jsonl", "json", "csv", "tsv", "parquet", "hf"),
                   help="input format (default: from the file extension)")
    p.add_argument("--field", "--column", dest="field", default="text",
                   help="JSON field or CSV/Parquet/dataset column with the text (default text)")
    p.add_argument("--split", default="auto", choices=("auto", "document", "tails", "tail"),
                   help="val split: whole documents (default with 100 documents or more), "
                   "tails = the end of every document (default with 2 to 99), tail = the "
                   "end of the corpus (default for one document, or with --val-bytes)")
    p.add_argument("--val-fraction", type=_fraction, default=0.1, help="default 0.1")
    p.add_argument("--val-bytes", type=_positive_int, help="exact val size (tail split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the document split")
    p.add_argument("--chat-loss", default="assistant", choices=("assistant", "all"),
                   help="JSONL conversations ({\"messages\": [...]}): which bytes are "
                   "training targets (default: the assistant's replies and their end)")
    _add_force(p, "replace an existing store named OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_ingest)
    p = data_sub.add_parser("entropies", help="precompute an entropy model's next-byte "
                            "entropies next to a store (for BLT entropy patching)")
    p.add_argument("store", help="byte store name")
    p.add_argument("-m", "--model", required=True, metavar="CKPT",
                   help="the entropy model checkpoint the BLT will use")
    p.add_argument("--newline-reset", action="store_true",
                   help="reset the entropy model's context after every newline")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_entropies)
    p = data_sub.add_parser("info", help="documents, bytes, UTF-8 validity, scripts, split")
    p.add_argument("store", help="byte store name (or text file)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="re-hash the data")
    p.set_defaults(func=cmd_data_info)

    p = sub.add_parser("train", help="train a model (new or resumed)")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("patches", help="show how a BLT or an entropy model cuts text "
                       "into patches")
    p.add_argument("model", help="BLT checkpoint, or a byte model to use as entropy model")
    p.add_argument("--text", help="text to cut")
    p.add_argument("--file", help="file to cut (raw bytes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--patching", choices=("entropy", "space", "fixed", "learned"),
                   help="override the patcher (default: the BLT's own, or entropy)")
    p.add_argument("--threshold", type=float, help="global entropy threshold (bits)")
    p.add_argument("--relative", type=float, help="approximately monotonic threshold (bits)")
    p.add_argument("--fit", type=float, metavar="MEAN_LEN",
                   help="fit the global threshold to this mean patch length on the input")
    p.add_argument("--max-len", type=_positive_int, help="maximum patch length")
    p.add_argument("--patch-size", type=_positive_int, help="bytes per patch (fixed)")
    p.set_defaults(func=cmd_patches)

    p = sub.add_parser("words", help="show how a T-Free model splits and codes text")
    p.add_argument("model", nargs="?", help="T-Free checkpoint (default: the default word "
                   "codes, no dictionary)")
    p.add_argument("--text", help="text to split")
    p.add_argument("--file", help="file to split (raw bytes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_words)

    p = sub.add_parser("tokun", help="round trips through a tokun chunk autoencoder")
    tokun = p.add_subparsers(dest="tokun_command", required=True, metavar="{encode,decode}")
    p = tokun.add_parser("encode", help="text -> chunk vectors -> text, with how many "
                         "characters came back")
    p.add_argument("checkpoint", help="tokun autoencoder checkpoint")
    p.add_argument("--text", help="text to encode")
    p.add_argument("--file", help="file to encode (raw bytes)")
    p.add_argument("--noise", type=_nonnegative_float, default=0.0, metavar="LEVEL",
                   help="add Gaussian noise of LEVEL x each dimension's std to the vectors")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--json", action="store_true", help="print one JSON object, vectors "
                   "included (what `untok tokun decode` reads)")
    p.set_defaults(func=cmd_tokun_encode)
    p = tokun.add_parser("decode", help="chunk vectors (JSON) -> text")
    p.add_argument("checkpoint", help="tokun autoencoder checkpoint")
    p.add_argument("--file", help="JSON from `untok tokun encode --json` (default: stdin)")
    p.set_defaults(func=cmd_tokun_decode)

    p = sub.add_parser("export", help="ship a checkpoint in a compact form")
    p.add_argument("checkpoint", help="checkpoint directory (or run directory)")
    p.add_argument("--ternary", action="store_true",
                   help="pack MatMul-free BitLinear weights as 2-bit codes + scale")
    p.add_argument("-o", "--out", required=True, help="output checkpoint directory")
    _add_force(p, "replace an existing --out")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="bits per byte and friends on held-out data")
    p.add_argument("checkpoint", help="checkpoint directory (or run directory)")
    p.add_argument("--data", required=True, help="byte store, text file or folder")
    p.add_argument("--split", default="val", choices=("val", "train", "all"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--per-file", action="store_true", help="bpb per document")
    p.add_argument("--max-bytes", type=_positive_int, metavar="N",
                   help="score only the first N units of the split (default: all of it)")
    p.add_argument("--stride", type=_positive_int, help="window stride (default context/2)")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="stream text from a model")
    p.add_argument("checkpoint", help="checkpoint directory (or run directory)")
    p.add_argument("--prompt", help="text to continue")
    p.add_argument("--prompt-file", help="read the prompt (raw bytes) from a file")
    p.add_argument("--max-bytes", type=_nonnegative_int, default=256, metavar="N",
                   help="stop after N generated bytes (default 256; a code-point model "
                   "never cuts a character)")
    _add_sampler_args(p)
    p.add_argument("--stop", action="append", default=[], help="stop after this string")
    p.add_argument("--no-prompt", action="store_true", help="print only the continuation")
    p.add_argument("--compile", action="store_true",
                   help="compile the decoding step first (slow start, faster long outputs)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk to a chat fine-tuned model in the terminal")
    p.add_argument("checkpoint", help="checkpoint directory (or run directory)")
    p.add_argument("--system", help="a system message that opens the conversation")
    p.add_argument("--max-bytes", type=_positive_int, default=512, metavar="N",
                   help="longest reply in bytes (default 512)")
    _add_sampler_args(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP API over a checkpoint "
                       "(extra [serve])")
    p.add_argument("checkpoint", nargs="?",
                   help="checkpoint directory (or run directory); optional with --runs")
    p.add_argument("--runs", metavar="DIR", help="the training console at /console over "
                   "the runs in DIR: charts, samples, start / stop / resume, open in the "
                   "playground")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--model-name", help="the model id clients ask for (default: the "
                   "checkpoint's folder name, e.g. runs/books/best -> books)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browser pages from ORIGIN call the API (repeatable; '*': any)")
    p.add_argument("--max-prompt", type=_positive_int, metavar="N",
                   help="longest prompt in units with BOS (default and most: the model's "
                   "context)")
    p.add_argument("--max-tokens", type=_positive_int, default=4096, metavar="N",
                   help="largest max_tokens a request may ask for (default 4096)")
    p.add_argument("--max-batch", type=_positive_int, default=16, metavar="N",
                   help="most requests decoded as one batch (flat models; default 16)")
    p.add_argument("--compile", action="store_true",
                   help="compile the decoding step first (slow start, faster decoding; "
                        "it compiles again for each batch size it meets)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="compute threads of the decoding engine (default: the cores less "
                        "one, at least 1: the event loop and the HTTP streams need a core)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_serve)

    _add_coding_parsers(sub)

    p = sub.add_parser("presets", help="list model presets")
    p.set_defaults(func=cmd_presets)
    return parser
