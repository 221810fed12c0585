"""untok: language models over raw bytes, from a laptop CPU to a GPU cluster.

The public API::

    import untok
    model = untok.load("runs/books/best")            # any checkpoint directory
    text = untok.generate_text(model, "Once upon a time", max_bytes=200)
    untok.train(untok.resolve(preset_name="tiny", overrides=["data.path=book.txt",
                                                             "train.steps=100"]), "runs/x")
"""

__version__ = "0.1.0"

from untok.config import DataConfig, ModelConfig, RunConfig, TrainConfig, resolve  # noqa: E402
from untok.data import ByteStore, ingest, open_data  # noqa: E402
from untok.errors import UntokError  # noqa: E402
from untok.evaluate import evaluate  # noqa: E402
from untok.generate import SamplerConfig, generate, generate_text  # noqa: E402
from untok.models import ByteLM, build_model  # noqa: E402
from untok.train import load, save_checkpoint, train  # noqa: E402

save = save_checkpoint

__all__ = [
    "ByteLM", "ByteStore", "DataConfig", "ModelConfig", "RunConfig", "SamplerConfig",
    "TrainConfig", "UntokError", "build_model", "evaluate", "generate", "generate_text",
    "ingest", "load", "open_data", "resolve", "save", "save_checkpoint", "train",
]
