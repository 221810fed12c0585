from pathlib import Path

import pytest

from untok.config import PRESETS, RunConfig, parse_overrides, read_recipe, replace, resolve
from untok.errors import ConfigError
from untok.models import build_model

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


def test_defaults_are_valid_and_frozen():
    config = RunConfig().validate()
    with pytest.raises(AttributeError):
        config.model.dim = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds(name):
    config = resolve(preset_name=name)
    model = build_model(config.model, "meta", init=False)
    assert model.num_params() > 0


def test_preset_sizes_match_their_promises():
    sizes = {n: build_model(resolve(preset_name=n).model, "meta", init=False).num_params()
             for n in ("small", "base", "large")}
    assert 3e6 <= sizes["small"] <= 5e6
    assert 20e6 <= sizes["base"] <= 30e6
    assert 100e6 <= sizes["large"] <= 140e6


def test_overrides_parse_types():
    values = parse_overrides(["train.lr=3e-4", "model.num_layers=6", "train.compile=true",
                              "data.path=some/file.txt", "train.steps=none"])
    assert values == {"train": {"lr": 3e-4, "compile": True, "steps": None},
                      "model": {"num_layers": 6}, "data": {"path": "some/file.txt"}}
    config = resolve(preset_name="tiny", overrides=["train.lr=3e-4", "model.num_layers=3"])
    assert config.train.lr == 3e-4 and config.model.num_layers == 3


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match="did you mean 'num_layers'"):
        resolve(overrides=["model.num_layer=3"])
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        resolve(overrides=["trian.lr=1"])
    with pytest.raises(ConfigError, match="unknown preset 'smal'.*did you mean 'small'"):
        resolve(preset_name="smal")


@pytest.mark.parametrize("override,message", [
    ("model.dim=abc", "expected int"),
    ("model.num_heads=5", "divisible"),
    ("model.kv_heads=3", "must divide model.num_heads"),
    ("model.kv_heads=-1", "must divide model.num_heads"),
    ("train.lr=-1", "positive"),
    ("train.schedule=linear", "schedule must be one of"),
    ("train.steps=0", "positive"),
    ("data.val_fraction=1.5", "val_fraction"),
])
def test_invalid_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve(preset_name="tiny", overrides=[override])


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        resolve(overrides=["lr=3"])


def test_replace_checks_keys():
    config = resolve(preset_name="tiny")
    assert replace(config, train={"steps": 5}).train.steps == 5
    with pytest.raises(ConfigError):
        replace(config, train={"stepz": 5})


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_loads(recipe):
    config = resolve(recipe=recipe)
    build_model(config.model, "meta", init=False)
    assert config.data.path, "a recipe names its data"
    budget = (config.train.steps, config.train.bytes, config.train.minutes)
    assert any(b is not None for b in budget), "a recipe sets a budget"


def test_recipes_exist():
    names = {r.stem for r in RECIPES}
    assert {"tiny", "demo", "shakespeare-small", "enwik8-small"} <= names


def test_bad_recipe(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("preset = 'tiny'\n[modle]\ndim = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        resolve(recipe=path)
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_recipe(path)
    with pytest.raises(ConfigError, match="recipe not found"):
        read_recipe(tmp_path / "missing.toml")


def test_keys_of_untok_0_1_still_work_with_one_line_each(tmp_path, capsys):
    import untok.config.loading as loading

    loading._SEEN.clear()
    config = resolve(preset_name="tiny", overrides=["train.objective=mse"])
    assert config.model.head == "distance"
    recipe = tmp_path / "old.toml"
    recipe.write_text("preset = 'mmfree-tiny'\n[model]\nternary_head = true\n"
                      "tie_embeddings = false\n")
    assert resolve(recipe=recipe).model.head == "ternary"
    assert resolve(overrides=["model.tie_embeddings=false"]).model.head == "linear"
    assert resolve(overrides=["model.tie_embeddings=true"]).model.head == "auto"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3  # once per deprecated key, however often it is given
    assert all(line.startswith("untok: ") and "deprecated" in line and "model.head" in line
               for line in lines)
    with pytest.raises(ConfigError, match="objective 'l2'"):
        resolve(overrides=["train.objective=l2"])


def test_an_unknown_family_names_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown model family 'gpt'.*flat, blt"):
        resolve(overrides=["model.family=gpt"])
