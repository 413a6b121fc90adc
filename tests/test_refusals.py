"""Input that needs no model is refused before torch and transformers are imported: a new user's typo costs
a second, not the import of a deep-learning stack. Each case runs the real entry point in a fresh process and
asks it, at exit, whether torch was loaded (start-up time itself is measured by bench/refusals.py, not here)."""

import json
import os
import subprocess
import sys

import pytest

PROBE = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('\\nTORCH=%s\\n' % ('torch' in sys.modules))); "
         "from xkd_cli.cli.app import main; main(sys.argv[1:])")


def _completed_run(runs, task, name, kind):
    run = runs / task / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"kind": kind, "status": "completed", "task": task, "name": name}))


@pytest.mark.parametrize("args, words", [
    (["sft", "--model", "tiny-t5-small", "--task", "synth-sum"], "already exists"),
    (["distill", "--task", "synth-sum", "--method", "gxkd"], "already exists"),
    (["sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--resume", "--name", "other"], "nothing to resume"),
    (["sft", "--model", "tiny-t5-small", "--task", "xsum", "--data", "{tmp}/missing.jsonl"], "does not exist"),
    (["sft", "--recipe", "{tmp}/bad.yaml"], "unknown key 'modle'"),
    (["pipeline", "{tmp}/missing.yaml"], "the bundled ones are in recipes/pipeline/"),
    (["pipeline", "{tmp}/bad.yaml"], "unknown key 'modle'"),
    (["distill", "--task", "synth-sum", "--method", "gkd", "--fused-head", "yes"], "--fused-head must be one of on, off"),
    (["pipeline", "{tmp}/bad-section.yaml"], "unknown key 'max_step' in recipe"),
    (["sft", "--model", "tiny-t5-small", "--task", "synth-summ"], "Did you mean 'synth-sum'?"),
    (["eval", "--model", "tiny-t5-small", "--task", "synth-summ"], "Did you mean 'synth-sum'?"),
    (["sft", "--model", "tiny-t5-smal", "--task", "synth-mt"], "Did you mean 'tiny-t5-small'?"),
    (["sft", "--model", "./no-such-model", "--task", "synth-mt"], "no such model directory"),
    (["sft", "--model", "nobody/no-such-model", "--task", "synth-mt"], "not in the local Hugging Face cache"),
    (["eval", "--model", "t5-small", "--task", "synth-mt"], "'t5-small' (= google-t5/t5-small) is not in the local"),
    (["sft", "--model", "tiny-t5-small", "--task", "{tmp}/bad-task.yaml"], "not valid YAML"),
    (["sft", "--model", "tiny-t5-small", "--task", "{tmp}/broken-task.yaml"], "broken.jsonl, line 2: malformed JSON"),
    (["sft", "--model", "tiny-t5-small", "--data", "{tmp}/broken.jsonl"], "broken.jsonl, line 2: malformed JSON"),
    (["distill", "--task", "synth-mt", "--method", "gxkd"], "no SFT'd student for task 'synth-mt'"),
    (["distill", "--task", "synth-mt", "--method", "gxkd", "--student", "tiny-t5-small"], "no SFT'd teacher"),
    (["gen-teacher", "--task", "synth-mt"], "no SFT'd teacher for task 'synth-mt'"),
])
def test_refused_before_torch(tmp_path, args, words):
    runs = tmp_path / "runs"
    _completed_run(runs, "synth-sum", "sft-tiny-t5-small", "sft")
    _completed_run(runs, "synth-sum", "gxkd", "distill")
    (tmp_path / "bad.yaml").write_text("modle: tiny-t5-small\n")
    (tmp_path / "bad-section.yaml").write_text("tasks: [synth-sum]\nteacher: {model: tiny-t5-large, max_step: 3}\n")
    (tmp_path / "bad-task.yaml").write_text("name: bad\ndata: [\n")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n')
    (tmp_path / "broken-task.yaml").write_text("data: ./broken.jsonl\nmetric: exact\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XKD_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1",
                               "HF_HUB_CACHE": str(tmp_path / "hf-cache")})
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert "TORCH=False" in proc.stderr, f"torch was imported before refusing: {argv}"
    assert "--recipe" not in proc.stderr or args[0] != "pipeline"  # the pipeline's recipe is positional
