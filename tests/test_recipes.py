"""Every shipped recipe is valid, and the SFT recipes say what the built-in defaults say."""

from pathlib import Path

import pytest
import yaml

from xkd_cli.config.core import build_config
from xkd_cli.config.defaults import sft_defaults
from xkd_cli.config.training import SFTConfig

RECIPES = sorted((Path(__file__).parent.parent / "recipes" / "sft").glob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 15


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_sft_recipe_is_valid_and_matches_presets(path):
    cfg = build_config(SFTConfig, recipe=path)
    values = yaml.safe_load(path.read_text())
    for key, value in sft_defaults(cfg.task, cfg.model).items():
        assert values[key] == value, f"{path.name}: {key} differs from presets.sft_defaults"


PIPELINE_RECIPES = sorted((Path(__file__).parent.parent / "recipes" / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in PIPELINE_RECIPES])
def test_pipeline_recipes_plan(xkd, runs, path):
    result = xkd("pipeline", path, "--dry-run", "--json")
    assert result.code == 0, result.err
    assert result.json()["steps"] and not runs.exists()


def test_every_recipe_folder_is_described():
    readme = (Path(__file__).parent.parent / "recipes" / "README.md").read_text()
    for folder in (Path(__file__).parent.parent / "recipes").iterdir():
        if folder.is_dir():
            assert f"`{folder.name}/`" in readme
