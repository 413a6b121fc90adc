"""Distillation options that are checked before any model loads."""

import pytest

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
