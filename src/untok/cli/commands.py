"""The ``untok`` subcommands: each parses nothing, calls the Python API and prints."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from untok.errors import UntokError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# -- data ---------------------------------------------------------------------------------

def cmd_data_ingest(args: argparse.Namespace) -> None:
    from untok.data.info import describe
    from untok.data.ingest import ingest

    store = ingest(args.sources, args.out, glob=args.glob, fmt=args.format, field=args.field,
                   split=args.split, val_fraction=args.val_fraction, val_bytes=args.val_bytes,
                   seed=args.seed, progress=not args.quiet, force=args.force,
                   chat_loss=args.chat_loss)
    info = describe(store)
    print(f"{store.paths['meta.json'].with_name(store.name)}: {info['documents']:,} documents, "
          f"{info['bytes']:,} bytes (train {info['train_bytes']:,}, val {info['val_bytes']:,}; "
          f"{info['split']['mode']} split)")
    if info["chat"]:
        print(f"chat: {info['chat']['markers']:,} role and end markers; "
              f"{info['chat']['target_share']:.1%} of positions are training targets")


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
    if info["chat"]:
        print(f"chat         {info['chat']['markers']:,} markers, "
              f"{info['chat']['target_share']:.1%} of positions are training targets")
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
                                 ("cpu_offload", args.cpu_offload or None),
                                 ("tracker", args.log)) if v is not None}
    if args.resume:
        if args.init:
            raise UntokError("--resume continues a run (a fine-tuning run too); --init "
                             "starts a new one: pass one of them")
        if args.preset or args.recipe:
            raise UntokError("--resume continues a run with its saved preset and recipe; "
                             "change other settings with --set train.KEY=VALUE")
        config, resume = resume_config(args.resume, data=args.data, overrides=args.set,
                                       budget=budget)
        return replace(config, train=runtime), resume
    base = {"data": {"path": args.data}} if args.data else {}
    if args.init:
        base = {**base, **_init_base(args)}
    overrides = [*_family_overrides(args), *args.set]
    config = resolve(preset_name=args.preset, recipe=args.recipe, overrides=overrides,
                     base=base)
    if args.data:  # --data wins over a recipe's data.path
        config = replace(config, data={"path": args.data})
    return replace(config, train={**budget, **runtime}), None


def _init_base(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config layer of ``--init CKPT``: the checkpoint's model (its shape cannot change),
    its run's train settings without the budget, and the absolute path of its weights."""
    from dataclasses import asdict

    from untok.checkpoint import read_model_config, read_train_state, resolve_checkpoint
    from untok.config import read_recipe

    if args.preset or (args.recipe and "preset" in read_recipe(args.recipe)):
        raise UntokError("--init takes the model from its checkpoint; drop --preset (a "
                         "recipe for fine-tuning sets train.* and data.* only)")
    checkpoint = resolve_checkpoint(args.init)
    train: dict[str, Any] = {}
    if (checkpoint / "train_state.json").is_file():  # the run's settings, not its budget
        train = read_train_state(checkpoint)["run_config"].get("train", {})
        train = {k: v for k, v in train.items() if k not in ("steps", "bytes", "minutes")}
    return {"model": asdict(read_model_config(checkpoint)),
            "train": {**train, "init": str(checkpoint.resolve())}}


def without_nproc(argv: list[str]) -> list[str]:
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


def _family_overrides(args: argparse.Namespace) -> list[str]:
    """``--patching/--patch-size/--entropy-model`` as ``model.patching.*`` overrides and
    ``--dict-size`` as ``model.words.dict_size``."""
    overrides = [] if args.dict_size is None else [f"model.words.dict_size={args.dict_size}"]
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
        return run_with_torchrun(args.nproc, ["train", *without_nproc(args.argv)])
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
    print(f"{result.stop_reason}: {result.step} steps, {result.units_seen:,} {result.unit}s in "
          f"{result.seconds / 60:.1f} min; best val {result.metric.replace('_', ' ')} {best}")
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
    if result["metric"] == "reconstruction_bits":
        _print_reconstruction(result)
        return
    print(f"bpb          {result['bpb']:.4f}   (bits per char {result['bits_per_char']:.4f})")
    print(f"accuracy     {result['accuracy']:.2%}")
    if result["units_per_100_bytes"] != 100:  # units that are not bytes
        print(f"units        {result['units_per_100_bytes']:.1f} per 100 bytes, "
              f"{result['out_of_vocabulary']:.2%} out of vocabulary")
    print(f"perplexity   {result['perplexity']:.3f} per byte")
    print(f"confidence   mean {result['confidence_mean']:.3f}, "
          f"min {result['confidence_min']:.2e}, max {result['confidence_max']:.3f}")
    for row in result.get("per_file", []):
        print(f"  {row['bpb']:.4f}  {row['bytes']:>10,}  {row['name']}")


def _print_reconstruction(result: dict[str, Any]) -> None:
    print(f"strict accuracy  {result['strict_accuracy']:.4%} of {result['chars']:,} "
          f"characters (every byte right), checked against the encoder")
    print(f"decoder alone    {result['decoder_accuracy']:.4%}")
    print(f"byte accuracy    {result['byte_accuracy']:.4%}")
    print(f"reconstruction   {result['reconstruction_bits']:.4f} bits per code byte")
    noise = ", ".join(f"{level} std: {acc:.2%}" for level, acc in result["noise"].items())
    print(f"under noise      {noise}")
    for row in result.get("per_file", []):
        print(f"  {row['strict_accuracy']:9.4%}  {row['chars']:>10,}  {row['name']}")


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


def _text_or_file(args: argparse.Namespace) -> bytes:
    if (args.text is None) == (args.file is None):
        raise UntokError("give exactly one of --text or --file")
    if args.file is None:
        return args.text.encode("utf-8", "surrogateescape")
    try:
        return Path(args.file).read_bytes()
    except OSError as exc:
        raise UntokError(f"cannot read {args.file}: {exc.strerror}") from None


def cmd_words(args: argparse.Namespace) -> None:
    from untok.word_report import describe_words, format_words, load_units

    data = _text_or_file(args)
    report = describe_words(load_units(args.model), data)
    print(json.dumps(report) if args.json else format_words(report))


def cmd_tokun_encode(args: argparse.Namespace) -> None:
    from untok.reconstruction import load_autoencoder, round_trip

    model = load_autoencoder(args.checkpoint)
    result = round_trip(model, _text_or_file(args), noise=args.noise, seed=args.seed)
    if args.json:
        _print_json({**result, "decoded": result["decoded"].decode("utf-8", "replace")})
        return
    print(f"{result['chars']} characters -> {result['chunks']} vectors of {result['dim']} "
          f"({result['chunk_chars']} characters each)"
          + (f", noise {args.noise} x std" if args.noise else ""))
    print(f"decoded: {result['decoded'].decode('utf-8', 'replace')}")
    print(f"characters right: {result['chars_right']} of {result['chars']}")


def cmd_tokun_decode(args: argparse.Namespace) -> None:
    from untok.reconstruction import decode_vectors, load_autoencoder

    model = load_autoencoder(args.checkpoint)
    source = sys.stdin.read() if args.file in (None, "-") else _read_text(args.file)
    try:
        parsed = json.loads(source)
    except json.JSONDecodeError as exc:
        raise UntokError(f"the vectors are not JSON ({exc.msg} at line {exc.lineno}): give "
                         "the output of `untok tokun encode CKPT --json`") from None
    vectors = parsed.get("vectors") if isinstance(parsed, dict) else parsed
    sys.stdout.write(decode_vectors(model, vectors).decode("utf-8", "replace") + "\n")


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UntokError(f"cannot read {path}: {exc}") from None


def cmd_patches(args: argparse.Namespace) -> None:
    from untok.patch_report import describe_patches, format_patches, load_patcher

    data = _text_or_file(args)
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
    from untok.compression_io import compress_file

    stats = compress_file(args.file, args.model, args.out, chunk_size=args.chunk_size,
                          batch_size=args.batch_size, adapt_lr=args.adapt_lr,
                          adapt_every=args.adapt_every, adapt_scope=args.adapt_scope,
                          window=args.window, device=args.device,
                          overwrite=args.force, progress=not args.quiet, compare=args.compare,
                          compiled=args.compile)
    if not args.quiet:
        rate = f"{stats['bpb']:.3f} bits per byte, {stats['kb_per_second']:.1f} KB/s" \
            if stats["bytes"] else "an empty input (the file holds the header only)"
        print(f"{args.file}: {stats['bytes']:,} -> {stats['compressed_bytes']:,} bytes, "
              f"{rate}", file=sys.stderr)
    if args.compare:  # on stdout: it is what was asked for
        print(comparison_table(stats))


def comparison_table(stats: dict) -> str:
    """untok's size next to the classic compressors' for ``untok compress --compare``."""
    n = max(stats["bytes"], 1)
    rows = [("untok", stats["compressed_bytes"]), *stats["compare"].items()]
    lines = [f"{'compressor':<10} {'bytes':>12} {'bits/byte':>9}"]
    for name, size in rows:
        lines.append(f"{name:<10} {'-':>12} {'-':>9}  (pip install zstandard)" if size is None
                     else f"{name:<10} {size:>12,} {8 * size / n:>9.3f}")
    return "\n".join(lines)


def cmd_decompress(args: argparse.Namespace) -> None:
    from untok.compression_io import decompress_file

    stats = decompress_file(args.file, args.model, args.out, device=args.device,
                            overwrite=args.force, progress=not args.quiet)
    if not args.quiet:
        print(f"{args.file}: {stats['bytes']:,} bytes restored (SHA-256 verified), "
              f"{stats['kb_per_second']:.1f} KB/s", file=sys.stderr)
