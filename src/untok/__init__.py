"""untok: language models over raw bytes, from a laptop CPU to a GPU cluster.

The public API::

    import untok
    model = untok.load("runs/books/best")            # any checkpoint directory
    text = untok.generate_text(model, "Once upon a time", max_bytes=200)
    blob = untok.compress(open("notes.txt", "rb").read(), model)  # untok.decompress(blob, model)
    untok.fit(untok.resolve(preset_name="tiny", overrides=["data.path=book.txt",
                                                             "train.steps=100"]), "runs/x")
"""

from untok.checkpoint import save_checkpoint  # noqa: E402
from untok.compression import compress, decompress  # noqa: E402
from untok.config import DataConfig, ModelConfig, RunConfig, TrainConfig, resolve  # noqa: E402
from untok.data import ByteStore, ingest, open_data  # noqa: E402
from untok.errors import UntokError  # noqa: E402
from untok.evaluate import evaluate  # noqa: E402
from untok.generate import (  # noqa: E402
    SamplerConfig,
    compile_decoding,
    generate,
    generate_text,
)
from untok.models import (  # noqa: E402
    BLT,
    ByteLM,
    Family,
    FlatLM,
    build_model,
    load,
    register,
)
from untok.patching import Patcher  # noqa: E402
from untok.scores import Logits, Scores  # noqa: E402
from untok.train.trainer import Trainer, TrainResult  # noqa: E402
from untok.train.trainer import train as fit  # noqa: E402  (untok.train is the package)
from untok.units import Units  # noqa: E402
from untok.version import __version__  # noqa: E402, F401

save = save_checkpoint

__all__ = [
    "BLT", "ByteLM", "ByteStore", "DataConfig", "Family", "FlatLM", "Logits", "ModelConfig",
    "Patcher", "RunConfig", "SamplerConfig", "Scores", "TrainConfig", "TrainResult", "Trainer",
    "Units", "UntokError", "build_model", "compile_decoding", "compress", "decompress",
    "evaluate", "fit", "generate", "generate_text", "ingest", "load", "open_data",
    "register", "resolve", "save", "save_checkpoint",
]
