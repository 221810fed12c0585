"""The ``untok`` command: parse arguments, call the Python API, print results.

Every subcommand is a thin wrapper; the work happens in plain functions that are also the
library's API. Problems with the user's input end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from untok.errors import UntokError

EPILOG = """examples:
  untok demo
  untok data ingest ~/books/ --glob '*.txt' -o books
  untok data info books
  untok train --data books --preset small --minutes 30 --out runs/books
  untok eval runs/books/best --data books --json
  untok generate runs/books/best --prompt "Once upon a time" --max-bytes 400
  untok train --resume runs/books/last --minutes 10
  untok compress notes.txt -m runs/books/best
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


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# -- data ---------------------------------------------------------------------------------

def cmd_data_ingest(args: argparse.Namespace) -> None:
    from untok.data.info import describe
    from untok.data.ingest import ingest

    store = ingest(args.sources, args.out, glob=args.glob, fmt=args.format, field=args.field,
                   split=args.split, val_fraction=args.val_fraction, val_bytes=args.val_bytes,
                   seed=args.seed, progress=not args.quiet, force=args.force)
    info = describe(store)
    print(f"{store.paths['meta.json'].with_name(store.name)}: {info['documents']:,} documents, "
          f"{info['bytes']:,} bytes (train {info['train_bytes']:,}, val {info['val_bytes']:,}; "
          f"{info['split']['mode']} split)")


def cmd_data_entropies(args: argparse.Namespace) -> None:
    from untok.data.entropies import compute_entropies, entropy_paths
    from untok.data.ingest import open_data

    store = open_data(args.store, progress=False)
    meta = compute_entropies(store, args.model, newline_reset=args.newline_reset,
                             progress=not args.quiet)
    paths = entropy_paths(store)
    print(f"wrote entropies of {meta['units']['train']:,} train and "
          f"{meta['units']['val']:,} val units to {paths['meta'].parent}/"
          f"{paths['train'].name.replace('-train.f16', '*')}")


def cmd_data_info(args: argparse.Namespace) -> None:
    from untok.data.info import describe
    from untok.data.ingest import open_data

    store = open_data(args.store, progress=False)
    if args.verify:
        store.verify()
    info = describe(store)
    if args.json:
        _print_json(info)
        return
    print(f"store        {info['name']}")
    print(f"documents    {info['documents']:,} (mean {info['mean_document_bytes']:,.0f} bytes, "
          f"max {info['max_document_bytes']:,})")
    print(f"bytes        {info['bytes']:,}")
    print(f"split        {info['split']['mode']}: train {info['train_bytes']:,} bytes, "
          f"val {info['val_bytes']:,} bytes")
    sampled = "" if info["sampled_bytes"] == info["bytes"] else \
        f" (of a {info['sampled_bytes']:,}-byte sample)"
    print(f"valid UTF-8  {info['valid_utf8_share']:.2%}{sampled}")
    scripts = ", ".join(f"{s['script']} {s['share']:.1%}" for s in info["top_scripts"])
    print(f"scripts      {scripts or '-'}")
    if args.verify:
        print("checksum     ok")


# -- train / eval / generate --------------------------------------------------------------

def _train_config(args: argparse.Namespace) -> tuple[Any, Path | None]:
    from untok.config import replace, resolve
    from untok.train.resume import resume_config

    budget = {k: v for k, v in (("steps", args.steps), ("bytes", args.bytes),
                                ("minutes", args.minutes)) if v is not None}
    runtime = {k: v for k, v in (("device", args.device), ("precision", args.precision),
                                 ("compile", args.compile or None),
                                 ("parallel", args.parallel),
                                 ("cpu_offload", args.cpu_offload or None)) if v is not None}
    if args.resume:
        if args.preset or args.recipe:
            raise UntokError("--resume continues a run with its saved preset and recipe; "
                             "change other settings with --set train.KEY=VALUE")
        config, resume = resume_config(args.resume, data=args.data, overrides=args.set,
                                       budget=budget)
        return replace(config, train=runtime), resume
    base = {"data": {"path": args.data}} if args.data else {}
    overrides = [*_patching_overrides(args), *args.set]
    config = resolve(preset_name=args.preset, recipe=args.recipe, overrides=overrides,
                     base=base)
    if args.data:  # --data wins over a recipe's data.path
        config = replace(config, data={"path": args.data})
    return replace(config, train={**budget, **runtime}), None


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` minus ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _patching_overrides(args: argparse.Namespace) -> list[str]:
    """``--patching/--patch-size/--entropy-model`` as ``model.patching.*`` overrides."""
    overrides = []
    if args.patching:
        overrides.append(f"model.patching.kind={args.patching}")
    if args.patch_size is not None:
        overrides.append(f"model.patching.patch_size={args.patch_size}")
    if args.entropy_model:
        overrides.append(f"model.patching.entropy_model={json.dumps(args.entropy_model)}")
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    """Exit status: 0 when the run ends by its budget or early stopping, 130 (143) when
    interrupted by SIGINT (SIGTERM) after saving, 2 with a message when it diverged."""
    from untok.train.distributed import launched_world, run_with_torchrun
    from untok.train.trainer import train

    world = launched_world()
    if args.nproc and args.nproc > 1 and not world.distributed:
        return run_with_torchrun(args.nproc, ["train", *_without_nproc(args.argv)])
    config, resume = _train_config(args)
    if resume is not None:
        out = Path(args.out) if args.out else resume.parent
    else:
        out = Path(args.out or Path("runs") / Path(config.data.path).name)
        if (out / "last").exists() and not args.force:
            raise UntokError(f"{out} already holds a run; resume it with --resume {out}/last, "
                             "choose another --out, or pass --force to replace it")
        if args.force:
            (out / "metrics.jsonl").unlink(missing_ok=True)
    result = train(config, out, resume=resume, progress=not args.quiet)
    if not world.is_main:
        return 0
    if result.stop_reason == "diverged":
        kept = f"; {out / 'best'} holds the best weights from before" \
            if result.best_val_bpb is not None else "; no checkpoint was written"
        raise UntokError(f"training diverged at step {result.step} (the loss is not a "
                         f"number){kept}. Lower train.lr (now {config.train.lr:g}) or raise "
                         "train.warmup_steps")
    best = f"{result.best_val_bpb:.4f}" if result.best_val_bpb is not None else "-"
    print(f"{result.stop_reason}: {result.step} steps, {result.units_seen:,} bytes in "
          f"{result.seconds / 60:.1f} min; best val bpb {best}")
    print(f"checkpoints: {out / 'best'} (best), {out / 'last'} (last)")
    if result.stop_reason == "interrupted":
        print(f"resume with: untok train --resume {out / 'last'}", file=sys.stderr)
        return 128 + (result.signal or signal.SIGINT)
    return 0


def cmd_eval(args: argparse.Namespace) -> None:
    from untok.checkpoint import read_train_state, resolve_checkpoint
    from untok.evaluate import evaluate
    from untok.hardware import pick_device
    from untok.heldout import open_eval_data
    from untok.models import load

    device = pick_device(args.device)
    checkpoint = resolve_checkpoint(args.checkpoint)
    model = load(checkpoint, device)
    train_state = None
    if (checkpoint / "train_state.json").is_file():
        train_state = read_train_state(checkpoint)
    store, held_out = open_eval_data(args.data, train_state, args.split,
                                     progress=not args.json)
    result = evaluate(model, store, args.split, stride=args.stride, max_bytes=args.max_bytes,
                      batch_size=args.batch_size, device=device, per_file=args.per_file,
                      progress=not args.json)
    result["held_out"] = held_out
    if args.json:
        _print_json(result)
        return
    if held_out["note"]:
        print(held_out["note"])
    print(f"{store.name} [{args.split}]: {result['bytes']:,} bytes")
    print(f"bpb          {result['bpb']:.4f}   (bits per char {result['bits_per_char']:.4f})")
    print(f"accuracy     {result['accuracy']:.2%}")
    print(f"perplexity   {result['perplexity']:.3f} per byte")
    print(f"confidence   mean {result['confidence_mean']:.3f}, "
          f"min {result['confidence_min']:.2e}, max {result['confidence_max']:.3f}")
    for row in result.get("per_file", []):
        print(f"  {row['bpb']:.4f}  {row['bytes']:>10,}  {row['name']}")


def cmd_generate(args: argparse.Namespace) -> None:
    from untok.generate import SamplerConfig, compile_decoding, generate
    from untok.hardware import pick_device
    from untok.models import load
    from untok.units import StreamDecoder, to_bytes

    if args.prompt is not None and args.prompt_file is not None:
        raise UntokError("give --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        try:
            prompt = Path(args.prompt_file).read_bytes()
        except OSError as exc:
            raise UntokError(f"cannot read prompt file: {exc}") from None
    else:
        prompt = to_bytes(args.prompt or "")
    temperature = 0.0 if args.greedy else args.temperature
    sampler = SamplerConfig(sampler=args.sampler, temperature=temperature, top_k=args.top_k,
                            top_p=args.top_p, low=args.low, high=args.high)
    sampler.validate()  # every option error before any output
    model = load(args.checkpoint, pick_device(args.device))
    if args.compile:
        compile_decoding(model)
    stream = generate(model, prompt, max_bytes=args.max_bytes, sampler=sampler,
                      seed=args.seed, stop=[to_bytes(s) for s in args.stop])
    decoder = StreamDecoder()
    out = sys.stdout
    try:
        if not args.no_prompt:
            out.write(decoder.feed(prompt))
        for byte in stream:
            out.write(decoder.feed(byte))
            out.flush()
    finally:  # an error or interrupt mid-stream starts on a line of its own
        out.write(decoder.flush() + "\n")


def cmd_demo(args: argparse.Namespace) -> None:
    from untok.demo import run_demo

    run_demo(minutes=args.minutes, out=Path(args.out), progress=not args.quiet,
             force=args.force)


def cmd_presets(_: argparse.Namespace) -> None:
    from untok.config import PRESETS, resolve
    from untok.models import build_model, family_of

    width = max(map(len, PRESETS))
    for name in PRESETS:
        model = resolve(preset_name=name).model
        params = build_model(model, "meta", init=False).num_params()
        print(f"{name:{width}s} {params / 1e6:7.2f}M params  "
              f"{family_of(model).summary(model)}")


# -- parser -------------------------------------------------------------------------------

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
    _add_force(p, "replace an existing run in --out")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=_positive_int,
                   help="train with N processes: relaunches this command through torchrun "
                        "(same as torchrun --standalone --nproc-per-node N -m untok train ...)")
    p.add_argument("--parallel", choices=("auto", "ddp", "fsdp"),
                   help="under torchrun: ddp (default) or fsdp (parameters sharded per block)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="with --parallel fsdp: keep parameters and optimizer state on the CPU")
    p.add_argument("--patching", choices=("entropy", "space", "fixed"),
                   help="BLT presets: how bytes are cut into patches")
    p.add_argument("--patch-size", type=_positive_int,
                   help="bytes per patch for --patching fixed (default 4)")
    p.add_argument("--entropy-model", metavar="CKPT",
                   help="byte model whose next-byte entropy drives --patching entropy "
                   "(train one with --preset entropy-small)")


def cmd_patches(args: argparse.Namespace) -> None:
    from untok.patch_report import describe_patches, format_patches, load_patcher

    if (args.text is None) == (args.file is None):
        raise UntokError("give exactly one of --text or --file")
    if args.file is not None:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise UntokError(f"cannot read {args.file}: {exc}") from None
    else:
        data = args.text.encode("utf-8", "surrogateescape")
    patcher = load_patcher(args.model, kind=args.patching, threshold=args.threshold,
                           relative=args.relative, max_len=args.max_len,
                           patch_size=args.patch_size, target_len=args.fit)
    report = describe_patches(patcher, data)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_patches(report, data))


def cmd_export(args: argparse.Namespace) -> None:
    from untok.export import export_ternary

    if not args.ternary:
        raise UntokError("choose an export format: --ternary (packed 2-bit BitLinear weights)")
    stats = export_ternary(args.checkpoint, args.out, overwrite=args.force)
    print(f"wrote {args.out}: {stats['layers']} BitLinear layers packed, "
          f"{stats['bitlinear_fp32_bytes'] / 1e6:.2f} MB fp32 -> "
          f"{stats['bitlinear_packed_bytes'] / 1e6:.3f} MB "
          f"({stats['bitlinear_ratio']:.1%}); model file "
          f"{stats['source_file_bytes'] / 1e6:.2f} MB -> {stats['file_bytes'] / 1e6:.2f} MB")


def cmd_compress(args: argparse.Namespace) -> None:
    from untok.compression import compress_file

    stats = compress_file(args.file, args.model, args.out, chunk_size=args.chunk_size,
                          batch_size=args.batch_size, adapt_lr=args.adapt_lr,
                          adapt_every=args.adapt_every, device=args.device,
                          overwrite=args.force, progress=not args.quiet)
    if not args.quiet:
        rate = f"{stats['bpb']:.3f} bits per byte, {stats['kb_per_second']:.1f} KB/s" \
            if stats["bytes"] else "an empty input (the file holds the header only)"
        print(f"{args.file}: {stats['bytes']:,} -> {stats['compressed_bytes']:,} bytes, "
              f"{rate}", file=sys.stderr)


def cmd_decompress(args: argparse.Namespace) -> None:
    from untok.compression import decompress_file

    stats = decompress_file(args.file, args.model, args.out, device=args.device,
                            overwrite=args.force, progress=not args.quiet)
    if not args.quiet:
        print(f"{args.file}: {stats['bytes']:,} bytes restored (SHA-256 verified), "
              f"{stats['kb_per_second']:.1f} KB/s", file=sys.stderr)


def _add_coding_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a file losslessly with a byte model",
                       description="Arithmetic-code FILE with the model's next-byte "
                       "probabilities. Decompressing needs the same checkpoint and the same "
                       "kind of device.")
    p.add_argument("file", help="file to compress (- = stdin)")
    p.add_argument("-m", "--model", required=True, help="checkpoint (or run) directory")
    p.add_argument("-o", "--out", help="output file (default FILE.utk; - = stdout)")
    p.add_argument("--chunk-size", type=_positive_int, default=16384,
                   help="bytes per independently decodable chunk (default 16384)")
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="chunks coded side by side (default 16)")
    p.add_argument("--adapt-lr", type=float, default=0.0,
                   help="keep training a copy of the model on the file as it is coded, with "
                        "this Adam learning rate (default 0 = off; 3e-4 works well: smaller "
                        "files, somewhat slower, and a damaged chunk spoils its whole batch)")
    p.add_argument("--adapt-every", type=_positive_int, default=32,
                   help="bytes per row between adaptation steps (default 32)")
    p.add_argument("--device", default="auto")
    _add_force(p, "overwrite the output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="restore a file made by untok compress",
                       description="Decode FILE.utk with the checkpoint that compressed it; "
                       "the output is written only once its SHA-256 checks out.")
    p.add_argument("file", help="compressed file (- = stdin)")
    p.add_argument("-m", "--model", required=True, help="checkpoint (or run) directory")
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
    p.add_argument("--patching", choices=("entropy", "space", "fixed"),
                   help="override the patcher (default: the BLT's own, or entropy)")
    p.add_argument("--threshold", type=float, help="global entropy threshold (bits)")
    p.add_argument("--relative", type=float, help="approximately monotonic threshold (bits)")
    p.add_argument("--fit", type=float, metavar="MEAN_LEN",
                   help="fit the global threshold to this mean patch length on the input")
    p.add_argument("--max-len", type=_positive_int, help="maximum patch length")
    p.add_argument("--patch-size", type=_positive_int, help="bytes per patch (fixed)")
    p.set_defaults(func=cmd_patches)

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
    p.add_argument("--stop", action="append", default=[], help="stop after this string")
    p.add_argument("--no-prompt", action="store_true", help="print only the continuation")
    p.add_argument("--compile", action="store_true",
                   help="compile the decoding step first (slow start, faster long outputs)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_generate)

    _add_coding_parsers(sub)

    p = sub.add_parser("presets", help="list model presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]  # after the subcommand
    try:
        code = args.func(args)
    except UntokError as exc:
        print(f"untok: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("untok: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `untok generate ... | head`
        sys.stderr.close()
        return 0
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
