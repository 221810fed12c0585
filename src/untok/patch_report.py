"""``untok patches``: how a patcher cuts a text, with statistics."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import torch

from untok.errors import UntokError
from untok.models.blt import check_entropy_shape
from untok.patching import Patcher, chunked_entropies, fit_threshold, patch_lengths
from untok.units import BOS


def load_patcher(path: str | Path, *, kind: str | None = None,
                 threshold: float | None = None, relative: float | None = None,
                 max_len: int | None = None, patch_size: int | None = None,
                 target_len: float | None = None) -> Patcher:
    """The patcher of a BLT checkpoint, or an entropy patcher around a byte model; the
    options override its settings. ``target_len`` fits the global threshold later (on the
    input, see :func:`describe_patches`)."""
    from untok.config import PatchingConfig
    from untok.models import capabilities, load

    model = load(path)
    if capabilities(model).patches:
        config, entropy_model = model.config.patching, model.patcher.entropy_model
    else:
        check_entropy_shape(model.config, path)
        config, entropy_model = PatchingConfig(kind="entropy", entropy_model=str(path)), model
    trained_with = config.kind
    changes = {k: v for k, v in (("kind", kind), ("threshold", threshold),
                                 ("relative", relative), ("max_len", max_len),
                                 ("patch_size", patch_size), ("target_len", target_len))
               if v is not None}
    if threshold is not None or relative is not None:
        changes.setdefault("threshold", threshold)
        changes.setdefault("relative", relative)
    config = dataclasses.replace(config, **changes)
    if config.kind == "entropy" and entropy_model is None:
        raise UntokError(f"{path} was trained with {trained_with} patching and holds no "
                         "entropy model; pass a byte model checkpoint for entropy patching")
    if config.kind == "learned" and trained_with != "learned":
        raise UntokError(f"{path} was trained with {trained_with} patching: learned patches "
                         "come from the router of a BLT trained with --patching learned")
    if target_len is not None and config.kind == "entropy":
        config = dataclasses.replace(config, threshold=None, relative=None)
    patcher = Patcher(config, entropy_model)
    if config.kind == "learned":
        patcher.boundary_probs = model.boundary_probs
    return patcher


def describe_patches(patcher: Patcher, data: bytes) -> dict:
    """Patch starts (byte offsets into ``data``), per-byte entropies and statistics."""
    if not data:
        raise UntokError("nothing to cut: the text is empty")
    ids = torch.tensor([BOS, *data])
    entropy = None
    if patcher.config.kind == "entropy":
        entropy = chunked_entropies(patcher, ids)[None]
        config = patcher.config
        if config.threshold is None and config.relative is None:
            fitted = fit_threshold(entropy[:, 1:], config.target_len, config.max_len)
            patcher = Patcher(dataclasses.replace(config, threshold=round(fitted, 4)),
                              patcher.entropy_model)
    probs = patcher.boundary_probs(ids[None]) if patcher.config.kind == "learned" else None
    starts = patcher.starts(ids[None], entropy, probs)[0, 1:]  # the BOS patch is not shown
    starts[0] = True
    lengths = patch_lengths(starts)
    report = {"patching": {k: v for k, v in dataclasses.asdict(patcher.config).items()
                           if k in ("kind", "patch_size", "max_len", "threshold",
                                    "relative", "newline_reset")},
              "bytes": len(data), "patches": int(len(lengths)),
              "starts": np.flatnonzero(starts.numpy()).tolist(),
              "mean_patch_len": float(lengths.mean()),
              "median_patch_len": float(np.median(lengths)),
              "patches_per_kb": 1000 * len(lengths) / len(data),
              "cut_characters": int(sum(0x80 <= data[i] < 0xC0 for i in
                                        np.flatnonzero(starts.numpy())))}
    if probs is not None:
        report["boundary_probs"] = [round(v, 4) for v in probs[0, 1:].tolist()]
    if entropy is not None:
        values = entropy[0, 1:].numpy().astype(np.float64)
        report["entropies"] = [round(v, 4) for v in values.tolist()]
        report["entropy"] = {"mean": values.mean(), "std": values.std(),
                             "median": float(np.median(values)), "min": values.min(),
                             "max": values.max()}
        report["entropy"] = {k: float(v) for k, v in report["entropy"].items()}
    return report


def readable(piece: bytes) -> str:
    """A patch as a quoted string: whole characters as themselves, the bytes of a character
    that a patch boundary cuts as ``\\xNN`` (``'При\\xd0'``, ``'\\xb2ет'``)."""
    text = repr(piece.decode("utf-8", "surrogateescape"))
    # an escape is a backslash not itself escaped (preceded by an even run of backslashes)
    return re.sub(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])", r"\1\\x\2", text)


def format_patches(report: dict, data: bytes, limit: int = 200) -> str:
    """Patches one per line (with per-byte entropies or boundary probabilities), then the
    statistics."""
    bounds = [*report["starts"], len(data)]
    entropies = report.get("entropies")
    probs = report.get("boundary_probs")
    lines = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if i == limit:
            lines.append(f"... {len(bounds) - 1 - limit} more patches (--json has all)")
            break
        line = f"{a:>7}  {readable(data[a:b]):<24}"
        if entropies is not None:
            line += "  H " + " ".join(f"{h:.2f}" for h in entropies[a:b])
        elif probs is not None:
            line += "  p " + " ".join(f"{p:.2f}" for p in probs[a:b])
        lines.append(line)
    p = report["patching"]
    lines += ["", f"patching: {p['kind']}" + "".join(
        f", {k} {v}" for k, v in p.items() if k != "kind" and v is not None),
        f"{report['bytes']:,} bytes, {report['patches']:,} patches: mean length "
        f"{report['mean_patch_len']:.2f}, median {report['median_patch_len']:g}, "
        f"{report['patches_per_kb']:.1f} patches per KB, {report['cut_characters']:,} "
        "cut inside a character"]
    if entropies is not None:
        e = report["entropy"]
        lines.append(f"entropy (bits): mean {e['mean']:.3f}, std {e['std']:.3f}, median "
                     f"{e['median']:.3f}, min {e['min']:.3f}, max {e['max']:.3f}")
    return "\n".join(lines)
