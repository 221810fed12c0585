"""``untok export``: ship a MatMul-free checkpoint with its ternary weights packed."""

from __future__ import annotations

from pathlib import Path

from untok.checkpoint import resolve_checkpoint, save_checkpoint
from untok.errors import UntokError
from untok.models import load, require
from untok.nn.bitlinear import BitLinear, PackedBitLinear, is_packed, pack_bitlinears


def export_ternary(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False
                   ) -> dict:
    """Write ``checkpoint`` to ``out`` with every BitLinear weight as 2-bit codes (four per
    byte) plus its scale; ``untok.load(out)`` runs from the packed form. Returns sizes."""
    source = resolve_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UntokError(f"{out} already exists; choose another -o or pass --force")
    model = load(source)
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    if not layers and is_packed(model):
        raise UntokError(f"{source} is already exported with its ternary weights packed; "
                         "it loads and runs as it is")
    require(model, "export_ternary", f"--ternary packs BitLinear layers and {source} has "
            "none; train a MatMul-free model (--preset mmfree-small, or --set "
            "model.backbone=mmfree)")
    float_bytes = sum(4 * m.weight.numel() for m in layers)
    pack_bitlinears(model)
    packed = [m for m in model.modules() if isinstance(m, PackedBitLinear)]
    packed_bytes = sum(m.packed.numel() + 4 for m in packed)  # codes + fp32 scale
    save_checkpoint(out, model)
    return {"layers": len(packed), "bitlinear_fp32_bytes": float_bytes,
            "bitlinear_packed_bytes": packed_bytes,
            "bitlinear_ratio": packed_bytes / float_bytes,
            "file_bytes": _size(out / "model.safetensors"),
            "source_file_bytes": _size(source / "model.safetensors"),
            "other_params": sum(p.numel() for p in model.parameters())}


def _size(path: Path) -> int:
    return path.stat().st_size


__all__ = ["export_ternary"]
