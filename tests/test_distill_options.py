"""Distillation options that are checked before any model loads."""

import os
import subprocess
import sys

import pytest

from xkd_cli.config.core import to_dict
from xkd_cli.config.methods import METHOD_OPTIONS, METHODS, methods_reading
from xkd_cli.config.training import DistillConfig
from xkd_cli.core.errors import XKDError


def test_the_reward_encoder_reads_the_state_after_the_action_by_default():
    assert DistillConfig(task="synth-mt").reward_position == "next"
    assert DistillConfig(task="synth-mt", reward_position="current").reward_position == "current"


@pytest.mark.parametrize("method", ["seqkd", "seqxkd", "minillm"])
def test_divergence_is_refused_where_it_would_be_ignored(xkd, runs, method):
    result = xkd("distill", "--task", "synth-mt", "--method", method, "--divergence", "fkl", "--runs-dir", runs)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert f"--divergence fkl has no effect on {method}" in result.err
    assert "skd, sxkd, gkd, gxkd" in result.err
    assert not runs.exists()


@pytest.mark.parametrize("method", ["skd", "sxkd", "gkd", "gxkd"])
def test_divergence_is_taken_where_it_is_the_loss(method):
    assert DistillConfig(task="synth-mt", method=method, divergence="tvd").divergence_name == "tvd"


def test_an_unknown_divergence_is_named():
    with pytest.raises(XKDError, match="unknown divergence 'kl'"):
        DistillConfig(task="synth-mt", method="seqkd", divergence="kl")


# One case per option family: the experiential term's, the α-mix's, the divergence's, MiniLLM's, sampling,
# teacher samples. Each is refused in one line by the real entry point before torch is imported, naming the
# option, the method and the methods it applies to.
NO_EFFECT = [
    (["--method", "skd", "--lam", "0.5"], "--lam 0.5 has no effect on skd", "seqxkd, sxkd, gxkd"),
    (["--method", "gkd", "--reward-position", "current"], "--reward-position current has no effect on gkd",
     "seqxkd, sxkd, gxkd"),
    (["--method", "seqkd", "--gamma", "0.9"], "--gamma 0.9 has no effect on seqkd", "seqxkd, sxkd, gxkd"),
    (["--method", "minillm", "--tau", "2"], "--tau 2.0 has no effect on minillm", "seqxkd, sxkd, gxkd"),
    (["--method", "sxkd", "--alpha", "0.3"], "--alpha 0.3 has no effect on sxkd", "gkd, gxkd"),
    (["--method", "gxkd", "--mix", "0.4"], "--mix 0.4 has no effect on gxkd", "--method minillm"),
    (["--method", "skd", "--no-whiten"], "--no-whiten has no effect on skd", "--method minillm"),
    (["--method", "skd", "--beta", "0.3"], "--beta 0.3 has no effect with --divergence fkl", "jsd and mix"),
    (["--method", "gkd", "--divergence", "tvd", "--beta", "0.3"], "--beta 0.3 has no effect with --divergence tvd",
     "jsd and mix"),
    (["--method", "skd", "--temperature", "0.7"], "--temperature 0.7 has no effect on skd", "gkd, gxkd, minillm"),
    (["--method", "sxkd", "--top-p", "0.9"], "--top-p 0.9 has no effect on sxkd", "gkd, gxkd, minillm"),
    (["--method", "gkd", "--teacher-data", "samples"], "--teacher-data samples has no effect on gkd", "seqkd, seqxkd"),
]


@pytest.mark.parametrize("args, said, applies", NO_EFFECT, ids=[" ".join(a) for a, _, _ in NO_EFFECT])
def test_an_option_the_method_does_not_read_is_refused_before_torch(tmp_path, args, said, applies):
    from test_refusals import PROBE

    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-c", PROBE, "distill", "--task", "synth-mt", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "XKD_RUNS_DIR": str(runs)})
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.split("\nTORCH=")[0].strip()
    assert error.count("\n") == 0 and said in error and applies in error, error
    assert "TORCH=False" in proc.stderr
    assert not runs.exists()


def test_the_same_option_in_a_recipe_is_refused_too(xkd, runs, tmp_path):
    recipe = tmp_path / "skd.yaml"
    recipe.write_text("method: skd\nlam: 0.01\n")
    result = xkd("distill", "--task", "synth-mt", "--recipe", recipe)
    assert result.code == 2 and "--lam 0.01 has no effect on skd" in result.err


def test_a_method_gets_the_defaults_of_what_it_reads_and_records_only_those():
    gxkd, skd, gkd = (DistillConfig(task="synth-mt", method=m) for m in ("gxkd", "skd", "gkd"))
    assert (gxkd.lam, gxkd.gamma, gxkd.tau, gxkd.reward_position, gxkd.alpha, gxkd.beta) == (0.001, 1.0, 1.0, "next",
                                                                                            0.5, 0.5)
    assert skd.lam is None and skd.alpha is None and skd.beta is None and skd.temperature is None
    assert gkd.beta == 0.5 and gkd.lam is None and gkd.mix is None
    recorded = to_dict(skd)
    assert not {"lam", "gamma", "tau", "reward_position", "alpha", "beta", "mix", "temperature", "top_p"} & set(recorded)
    assert {"lam", "reward_position", "alpha", "beta", "temperature"} <= set(to_dict(gxkd))
    # --beta belongs to the divergences that read it
    assert DistillConfig(task="synth-mt", method="skd", divergence="jsd", beta=0.2).beta == 0.2


def test_every_method_option_is_read_by_some_method_and_ignored_by_another():
    for option in METHOD_OPTIONS:
        assert 0 < len(methods_reading(option)) < len(METHODS.names()), option


def test_minillm_gets_its_authors_settings_and_the_tasks_learning_rate():
    """MiniLLM reads --ppo-epochs, --lm-weight and --whiten with its authors' values by default and, with them,
    learns at the task's distillation rate (docs/method.md, "MiniLLM", has the measurement); other methods do not
    read those options."""
    from xkd_cli.config.defaults import BUNDLED_DISTILL, make_config

    minillm = make_config(DistillConfig, {"task": "synth-sum", "method": "minillm"})
    assert (minillm.ppo_epochs, minillm.lm_weight, minillm.whiten, minillm.mix) == (4, 1.0, True, 0.2)
    assert minillm.lr == BUNDLED_DISTILL["synth-sum"]["lr"]
    gkd = make_config(DistillConfig, {"task": "synth-sum", "method": "gkd"})
    assert gkd.ppo_epochs is None and gkd.whiten is None and gkd.lm_weight is None
    assert not {"ppo_epochs", "lm_weight", "whiten"} & set(to_dict(gkd))
    with pytest.raises(XKDError, match=r"--ppo-epochs 2 has no effect on gkd"):
        DistillConfig(task="synth-mt", method="gkd", ppo_epochs=2)
    with pytest.raises(XKDError, match=r"--ppo-epochs must be a finite integer.*--lm-weight must be in \[0, inf\]"):
        DistillConfig(task="synth-mt", method="minillm", ppo_epochs=1.5, lm_weight=-1)
