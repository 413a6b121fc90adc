"""The small things a new user trips over: a zero diversity printed as -2.8e-14, <bool> after switches in
--help, a lock file left in finished runs."""

import pytest

from xkd_cli.core.errors import XKDError
from xkd_cli.data.taskfile import get_task
from xkd_cli.evaluation.evaluate import score
from xkd_cli.training.checkpoint.lock import LOCK_FILE, RunLock


def test_identical_samples_have_exactly_zero_diversity():
    same = "the council approved the new budget for the city library on monday"
    result = score(get_task("synth-sum"), [[same, same, same]] * 4, ["the council approved a budget"] * 4)
    assert result["diversity"] == 0.0 and "e-" not in f"{result['diversity']:g}"


@pytest.mark.parametrize("command", [[], ["sft"], ["distill"], ["eval"], ["diversity"], ["judge"], ["gen-teacher"],
                                     ["pipeline"], ["report"]])
def test_switches_show_no_bool_metavar(xkd, command):
    result = xkd(*command, "--help")
    assert result.code == 0
    lines = [line for line in result.out.splitlines() if "<bool>" in line]
    assert not lines, lines


def test_lock_is_removed_when_released(tmp_path):
    lock = RunLock(tmp_path).__enter__()
    assert (tmp_path / LOCK_FILE).is_file()
    with pytest.raises(XKDError, match="being trained right now"):
        RunLock(tmp_path).__enter__()
    lock.__exit__(None, None, None)
    assert not (tmp_path / LOCK_FILE).exists()
    RunLock(tmp_path).__enter__().__exit__(None, None, None)  # and the next run locks it afresh


def test_a_long_table_title_stays_on_one_line():
    from rich.console import Console

    from xkd_cli.core.ui import table

    title = "synth-mt · eval-tiny-t5-small · validation · greedy · 200 examples"
    console = Console(width=120, record=True)
    console.print(table(title, ["metric", "value"], [("rouge2", 1.0)]))
    assert title in console.export_text()
