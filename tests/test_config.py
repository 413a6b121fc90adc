"""Config merging: defaults → recipe → flags, unknown keys, types, ranges."""

import pytest

from xkd_cli.config.core import build_config, config_hash, load_recipe
from xkd_cli.config.training import TrainingConfig
from xkd_cli.core.errors import XKDError


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_layers_override_in_order(tmp_path):
    recipe = write(tmp_path, "lr: 0.01\nmax-steps: 50\nseed: 7\n")
    cfg = build_config(TrainingConfig, defaults={"task": "synth-sum", "lr": 0.1, "max_steps": 10, "batch_size": 4},
                       recipe=recipe, flags={"seed": 3, "max_steps": None})
    assert (cfg.lr, cfg.max_steps, cfg.seed, cfg.batch_size) == (0.01, 50, 3, 4)


def test_false_and_zero_flags_override_recipe(tmp_path):
    recipe = write(tmp_path, "task: synth-sum\neval_every: 100\nweight_decay: 0.1\n")
    cfg = build_config(TrainingConfig, recipe=recipe, flags={"eval_every": 0, "weight_decay": 0.0})
    assert cfg.eval_every == 0 and cfg.weight_decay == 0.0


def test_unknown_recipe_key_is_named_with_suggestion(tmp_path):
    recipe = write(tmp_path, "task: synth-sum\nlearning_rat: 0.1\n")
    with pytest.raises(XKDError, match=r"unknown key 'learning_rat'.*"):
        build_config(TrainingConfig, recipe=recipe)


def test_wrong_type_is_named(tmp_path):
    recipe = write(tmp_path, "task: synth-sum\nmax_steps: lots\n")
    with pytest.raises(XKDError, match="max_steps"):
        build_config(TrainingConfig, recipe=recipe)


def test_all_range_problems_reported_at_once():
    with pytest.raises(XKDError) as info:
        build_config(TrainingConfig, flags={"task": "x", "lr": -1.0, "train_fraction": 1.5, "batch_size": 0})
    message = str(info.value)
    assert "--lr" in message and "--train-fraction" in message and "--batch-size" in message


@pytest.mark.parametrize("text,match", [("- a\n- b\n", "mapping"), ("a: [1\n", "not valid YAML")])
def test_bad_recipe_files(tmp_path, text, match):
    with pytest.raises(XKDError, match=match):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(XKDError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_hash_ignores_listed_keys():
    a = TrainingConfig(task="t", seed=1, log_every=5)
    b = TrainingConfig(task="t", seed=1, log_every=50)
    assert config_hash(a, ignore=("log_every",)) == config_hash(b, ignore=("log_every",))
    assert config_hash(a) != config_hash(b)


def test_make_config_reads_the_recipe_once(tmp_path, monkeypatch):
    from xkd_cli.config import core
    from xkd_cli.config.defaults import make_config
    from xkd_cli.config.training import SFTConfig

    recipe = write(tmp_path, "task: synth-sum\nmodel: tiny-t5-large\nlr: 0.01\n")
    reads = []
    real_read = core.Path.read_text
    monkeypatch.setattr(core.Path, "read_text", lambda self, *a, **k: reads.append(self) or real_read(self, *a, **k))
    cfg = make_config(SFTConfig, {"max_steps": 3}, recipe=recipe)
    assert reads == [recipe]
    assert (cfg.lr, cfg.max_steps, cfg.model, cfg.batch_size) == (0.01, 3, "tiny-t5-large", 16)  # 16: synth-sum's


def test_the_output_length_has_two_spellings_everywhere(tmp_path):
    from xkd_cli.config.evaluation import EvalConfig
    from xkd_cli.config.training import SFTConfig

    recipe = write(tmp_path, "task: synth-sum\nmodel: m\nmax-output-len: 7\n")
    assert build_config(EvalConfig, recipe=recipe).max_new_tokens == 7
    assert build_config(EvalConfig, recipe=recipe, flags={"max_output_len": 9}).max_new_tokens == 9
    assert build_config(SFTConfig, defaults={"max_new_tokens": 5}, recipe=write(tmp_path, "task: t\nmodel: m\n"),
                        flags={"max_new_tokens": None}).max_output_len == 5
    both = write(tmp_path, "task: synth-sum\nmodel: m\nmax_output_len: 7\nmax_new_tokens: 8\n")
    with pytest.raises(XKDError, match="both 'max_output_len' and 'max_new_tokens' are given, two spellings of one option"):
        build_config(SFTConfig, recipe=both)


def test_a_config_declares_its_per_task_defaults(tmp_path):
    """make_config and the help know no config class: a config names its presets (TASK_DEFAULTS) and gets them,
    in its own spelling of the output length; a task file's lengths come first."""
    from dataclasses import dataclass
    from typing import ClassVar

    from xkd_cli.config.core import option
    from xkd_cli.config.defaults import LENGTH_DEFAULTS, TaskDefaults, make_config, per_task_options
    from xkd_cli.config.evaluation import JudgeConfig
    from xkd_cli.config.training import DistillConfig

    @dataclass(frozen=True)
    class Probe:
        task: str = option("", "Task.")
        max_input_len: int = option(1, "Prompt length.")
        max_new_tokens: int = option(1, "Output length.")
        TASK_DEFAULTS: ClassVar[TaskDefaults] = LENGTH_DEFAULTS

    assert per_task_options(Probe) == {"max_input_len", "max_new_tokens"}
    cfg = make_config(Probe, {"task": "synth-mt"})
    assert (cfg.max_input_len, cfg.max_new_tokens) == (48, 64)
    task_file = tmp_path / "mine.yaml"
    task_file.write_text("name: mine\nmax_input_len: 30\nmax_output_len: 12\n")
    assert make_config(Probe, {"task": str(task_file)}).max_new_tokens == 12
    assert per_task_options(DistillConfig) == {"max_steps", "batch_size", "lr", "warmup_steps", "max_input_len",
                                               "max_output_len"}
    assert make_config(DistillConfig, {"task": "synth-mt", "student": "tiny-t5-large"}).max_steps == 200
    assert per_task_options(JudgeConfig) == set()


def test_shared_option_groups_are_declared_once():
    """How a command loads its model and how it calls an API are each one base class; no config declares one
    of their options again, except training's --load-in-* (same option, a longer help)."""
    import dataclasses

    from xkd_cli.config.evaluation import DiversityConfig, EvalConfig, JudgeConfig
    from xkd_cli.config.fields import ApiClient, ModelLoading
    from xkd_cli.config.generation import GenTeacherConfig
    from xkd_cli.config.training import DistillConfig, SFTConfig

    groups = {ModelLoading: (SFTConfig, DistillConfig, EvalConfig, DiversityConfig, GenTeacherConfig),
              ApiClient: (GenTeacherConfig, JudgeConfig)}
    for group, users in groups.items():
        names = {f.name for f in dataclasses.fields(group)}
        for cls in users:
            assert issubclass(cls, group)
            again = {n for klass in cls.__mro__ if klass is not group
                     for n in klass.__dict__.get("__annotations__", {})} & names
            assert again <= {"load_in_8bit", "load_in_4bit"} and (not again or issubclass(cls, TrainingConfig)), again
    with pytest.raises(XKDError, match="--concurrency.*--timeout"):
        JudgeConfig(task="t", a="x", b="y", concurrency=0, timeout=0)
