"""Configuration: the schema (:mod:`.schema`), named presets (:mod:`.presets`) and how a
run's config is resolved from them, TOML recipes and ``--set`` overrides (:mod:`.loading`).

    defaults -> preset (``--preset`` or ``preset = ...`` in the recipe) -> recipe TOML
             -> ``--set section.key=value`` overrides

Unknown keys are errors that name the nearest valid key. The resolved config is saved in
every checkpoint, so a run can always be rebuilt from its directory alone.
"""

from untok.config.loading import (
    from_dict,
    parse_overrides,
    parse_value,
    read_recipe,
    replace,
    resolve,
    save_json,
    warn_deprecated,
)
from untok.config.presets import PRESETS, preset
from untok.config.schema import (
    ATTENTIONS,
    BACKBONES,
    EMBEDDINGS,
    FAMILY_RULES,
    HEADS,
    PARALLEL,
    PATCHERS,
    PRECISIONS,
    SECTIONS,
    UNITS,
    ChunksConfig,
    DataConfig,
    EmbeddingConfig,
    LocalConfig,
    ModelConfig,
    PatchingConfig,
    QLearnConfig,
    RunConfig,
    TrainConfig,
    WordsConfig,
)

__all__ = [
    "ATTENTIONS", "BACKBONES", "EMBEDDINGS", "FAMILY_RULES", "HEADS", "PARALLEL", "PATCHERS",
    "PRECISIONS", "PRESETS", "SECTIONS", "UNITS", "ChunksConfig", "DataConfig", "EmbeddingConfig",
    "LocalConfig", "ModelConfig", "PatchingConfig", "QLearnConfig", "RunConfig",
    "TrainConfig", "WordsConfig", "from_dict", "parse_overrides", "parse_value",
    "preset", "read_recipe", "replace", "resolve", "save_json", "warn_deprecated",
]
