"""The ``untok`` subcommands that decode: ``generate``, ``chat`` and ``serve``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from untok.errors import UntokError


def _sampler(args: argparse.Namespace) -> Any:
    """The sampler of ``--sampler/--temperature/--top-k/...``, checked before any output."""
    from untok.generate import SamplerConfig

    temperature = 0.0 if args.greedy else args.temperature
    sampler = SamplerConfig(sampler=args.sampler, temperature=temperature, top_k=args.top_k,
                            top_p=args.top_p, low=args.low, high=args.high)
    sampler.validate()
    return sampler


def cmd_generate(args: argparse.Namespace) -> None:
    from untok.generate import compile_decoding, generate
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
    sampler = _sampler(args)
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


def cmd_chat(args: argparse.Namespace) -> None:
    """A terminal conversation: each line read is a user message, each reply streams."""
    from untok.chat import render
    from untok.generate import generate
    from untok.hardware import pick_device
    from untok.models import load
    from untok.units import StreamDecoder

    sampler = _sampler(args)
    model = load(args.checkpoint, pick_device(args.device))
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    interactive = sys.stdin.isatty()
    if interactive:
        print("type a message; /reset starts over; Ctrl-D ends", file=sys.stderr)
    warned = False
    while True:
        try:
            line = input("> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        if line.strip() == "/reset":
            messages = list(opening)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        ids = render(messages, model.units)
        if len(ids) > model.config.context and not warned:
            warned = True
            print(f"(the conversation is longer than the model's context of "
                  f"{model.config.context} units: it sees only the end; /reset starts over)",
                  file=sys.stderr)
        decoder, reply = StreamDecoder(), b""
        for piece in generate(model, ids=ids, max_bytes=args.max_bytes, sampler=sampler,
                              seed=args.seed):
            reply += piece
            sys.stdout.write(decoder.feed(piece))
            sys.stdout.flush()
        sys.stdout.write(decoder.flush() + "\n")
        messages.append({"role": "assistant", "content": reply.decode("utf-8", "replace")})


def served_name(checkpoint: str) -> str:
    """A checkpoint's default model id: its run's folder name (runs/books/best -> books)."""
    path = Path(checkpoint).resolve()
    return path.parent.name if path.name in ("best", "last") else path.name


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from untok.serve.app import create_app
    except ImportError:
        raise UntokError("untok serve needs its extra: pip install 'untok[serve]'") from None
    import torch

    from untok.generate import compile_decoding
    from untok.hardware import pick_device
    from untok.models import load

    if args.checkpoint is None and args.runs is None:
        raise UntokError("give a checkpoint to serve, or --runs DIR for the training console")
    device = pick_device(args.device)
    # only the engine's thread computes with many threads (see untok.serve.engine)
    threads = args.threads or max(torch.get_num_threads() - 1, 1)
    torch.set_num_threads(1)
    model = load(args.checkpoint, device).eval() if args.checkpoint else None
    if model is not None and args.compile:
        compile_decoding(model)
    name = args.model_name or (served_name(args.checkpoint) if args.checkpoint else "")
    app = create_app(model, name, api_key=args.api_key, cors_origins=args.cors_origin,
                     max_prompt=args.max_prompt, max_tokens=args.max_tokens,
                     max_batch=args.max_batch, runs=args.runs, device=device,
                     threads=threads)
    # the decoding thread and the event loop share the GIL: hand it over every 0.5 ms
    # rather than every 5 ms, so that streams are written while a batch decodes
    # (16 streams: +15-25% bytes/s measured, bench/serve.py)
    sys.setswitchinterval(0.0005)
    where = f"http://{args.host}:{args.port}"
    print(f"serving {name or 'no model yet'} on {where}/v1, playground {where}/"
          f"{f', console {where}/console' if args.runs else ''} (Ctrl-C stops)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
