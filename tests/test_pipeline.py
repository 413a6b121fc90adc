"""`xkd pipeline`: plan, dry run, a real small pipeline end to end, resume by skipping finished steps."""

import json
import re

import pytest

from xkd_cli.experiments.pipeline import plan

RECIPE = """
tasks: [synth-mt]
teacher: {model: tiny-t5-base, max_steps: 2, batch_size: 2, max_input_len: 40, max_output_len: 10}
student: {model: tiny-t5-small, max_steps: 2, batch_size: 2, max_input_len: 40, max_output_len: 10}
gen_teacher: {limit: 6, max_new_tokens: 8}
methods: [seqkd, gxkd]
distill: {max_steps: 2, batch_size: 2, max_input_len: 40, max_output_len: 10}
eval: {limit: 3, max_new_tokens: 6}
diversity: {models: [student, gxkd], temperatures: [1.0], num_samples: 2, limit: 2, max_new_tokens: 6}
judge: {a: gxkd, b: seqkd, limit: 2, base_url: "http://127.0.0.1:9/v1"}
sweep: {param: lam, values: [0.0, 0.01], methods: [gxkd]}
"""


def write(tmp_path, text, name="pipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_dry_run_plans_without_compute(xkd, runs, tmp_path):
    result = xkd("pipeline", write(tmp_path, RECIPE), "--dry-run", "--json")
    assert result.code == 0, result.err
    steps = result.json()["steps"]
    kinds = [s["kind"] for s in steps]
    assert kinds[:3] == ["sft", "sft", "gen-teacher"]
    names = [s["name"] for s in steps if s["kind"] == "distill"]
    assert names == ["seqkd", "gxkd", "gxkd-lam-0.0", "gxkd-lam-0.01"]
    assert kinds[-2:] == ["diversity", "judge"]
    assert not runs.exists()


@pytest.mark.parametrize("text,words", [
    ("tasks: [synth-mt]\nmethod: [gkd]\n", ["unknown key 'method'", "methods"]),
    ("tasks: [synth-mtt]\n", ["unknown task 'synth-mtt'"]),
    ("tasks: [synth-mt]\nmethods: [gkd]\ndistill: {lamda: 0.1}\n", ["lamda", "distill"]),
    ("tasks: [synth-mt]\nmethods: [gxkd]\ndistill: {lam: -1}\n", ["--lam"]),
    ("tasks: [synth-mt]\nmethods: [gkd, skd]\ndistill: {lam: 0.1}\n", ["sets lam", "none of its methods"]),
    ("tasks: [synth-mt]\nmethods: [gkd]\nmethod_options: {gkd: {mix: 0.3}}\n", ["--mix 0.3 has no effect on gkd"]),
    ("tasks: [synth-mt]\nsweep: {param: lr, values: [1]}\n", ["sweep param"]),
    ("methods: [gkd]\n", ["no task"]),
])
def test_bad_recipes_are_refused(xkd, runs, tmp_path, text, words):
    result = xkd("pipeline", write(tmp_path, text), "--dry-run")
    assert result.code == 2 and result.err.count("\n") == 1
    for word in words:
        assert word in result.err


def test_pipeline_runs_then_resumes(xkd, runs, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    recipe = write(tmp_path, RECIPE)
    result = xkd("pipeline", recipe, "--json")
    assert result.code == 0, result.err
    steps = result.json()["steps"]
    judge = steps[-1]
    assert judge["kind"] == "judge" and judge["skipped"] and "no judge endpoint" in judge["reason"]
    assert "judge skipped: $OPENAI_API_KEY holds no API key" in result.err
    counters = re.findall(r"^(\d+)/(\d+) ", result.err, flags=re.M)  # the report is the last of the counted steps
    assert {total for _, total in counters} == {str(len(steps) + 1)} and counters[-1][0] == counters[-1][1]
    task_dir = runs / "synth-mt"
    assert not list(task_dir.glob("*/.training.lock"))  # finished runs leave no lock file behind
    for name in ("teacher", "student", "teacher-samples", "seqkd", "gxkd", "gxkd-lam-0.01", "diversity"):
        assert json.loads((task_dir / name / "run.json").read_text())["status"] == "completed", name
    record = json.loads((task_dir / "gxkd-lam-0.01" / "run.json").read_text())
    assert record["sweep"] == {"param": "lam", "value": 0.01, "method": "gxkd"}
    assert json.loads((task_dir / "gxkd-lam-0.01" / "config.json").read_text())["lam"] == 0.01
    assert (task_dir / "seqkd" / "eval" / "validation-greedy" / "metrics.json").is_file()
    assert (task_dir / "diversity" / "diversity.png").is_file()
    report = result.json()["report"]
    assert (runs / "report" / "report.md").is_file()
    gxkd_row = next(r for r in report["table1"]["rows"] if r["key"] == "gxkd")
    assert gxkd_row["cells"]["synth-mt"]["value"] == json.loads(
        (task_dir / "gxkd" / "eval" / "validation-greedy" / "metrics.json").read_text())["metrics"]["bleu"]
    assert any(f["param"] == "lam" for f in report["figures"])

    # A second run skips every training step and leaves the models untouched.
    model = task_dir / "gxkd" / "model" / "model.safetensors"
    before = model.stat().st_mtime_ns
    again = xkd("pipeline", recipe, "--json")
    assert again.code == 0, again.err
    skipped = [s for s in again.json()["steps"] if s.get("skipped")]
    assert {s["kind"] for s in skipped} >= {"sft", "gen-teacher", "distill"}
    assert len([s for s in skipped if s["kind"] == "distill"]) == 4
    assert model.stat().st_mtime_ns == before

    # Another config for an existing run is refused (nothing touched) unless --overwrite.
    changed = write(tmp_path, RECIPE.replace("methods: [seqkd, gxkd]\ndistill: {max_steps: 2",
                                             "methods: [seqkd, gxkd]\ndistill: {max_steps: 3"), "changed.yaml")
    refused = xkd("pipeline", changed)
    assert refused.code == 2 and "max_steps" in refused.err and "--overwrite" in refused.err
    assert model.stat().st_mtime_ns == before
    # Checkpoint settings change no model: a recipe that differs only in them finds its runs done.
    kept = write(tmp_path, RECIPE.replace("distill: {max_steps: 2,", "distill: {max_steps: 2, save_every: 1, keep_last: 3,"),
                 "kept.yaml")
    planned = xkd("pipeline", kept, "--dry-run", "--json")
    assert planned.code == 0, planned.err
    assert {s["state"] for s in planned.json()["steps"] if s["kind"] == "distill"} == {"done"}


SEEDED = """
tasks: [synth-mt]
teacher: {model: tiny-t5-base, max_steps: 2}
student: {model: tiny-t5-small, max_steps: 2}
methods: [gkd, gxkd]
distill: {max_steps: 2}
seeds: [1, 2]
seed_students: true
judge: {a: gxkd, b: gkd, limit: 2}
sweep: [{param: lam, values: [0.01], methods: [gxkd]}, {param: reward_position, values: [current], methods: [gxkd]}]
"""


def test_seeds_expand_the_plan(xkd, runs, tmp_path):
    """seeds: every distillation once per seed, and with seed_students one SFT student per seed that the
    distillations of that seed start from; the dry run shows the expanded plan."""
    result = xkd("pipeline", write(tmp_path, SEEDED), "--dry-run", "--json")
    assert result.code == 0, result.err
    steps = result.json()["steps"]
    assert [(s["kind"], s["name"]) for s in steps if s["kind"] in ("sft", "distill")] == [
        ("sft", "teacher"), ("sft", "student-seed-1"), ("sft", "student-seed-2"),
        ("distill", "gkd-seed-1"), ("distill", "gkd-seed-2"), ("distill", "gxkd-seed-1"), ("distill", "gxkd-seed-2"),
        ("distill", "gxkd-lam-0.01-seed-1"), ("distill", "gxkd-lam-0.01-seed-2"),
        ("distill", "gxkd-reward_position-current-seed-1"), ("distill", "gxkd-reward_position-current-seed-2")]
    assert {s["name"] for s in steps if s["kind"] == "eval"} == {
        "teacher", "student-seed-1", "student-seed-2", "gkd-seed-1", "gkd-seed-2", "gxkd-seed-1", "gxkd-seed-2",
        "gxkd-lam-0.01-seed-1", "gxkd-lam-0.01-seed-2", "gxkd-reward_position-current-seed-1",
        "gxkd-reward_position-current-seed-2"}
    assert steps[-1]["kind"] == "judge" and steps[-1]["note"] == "gxkd-seed-1 vs gkd-seed-1"
    assert "seed 2" in next(s["note"] for s in steps if s["name"] == "gxkd-seed-2")
    # The configs carry the seed and the seed's student; the plan says so in text too.
    configs = {s.name: s for s in plan(write(tmp_path, SEEDED), runs) if s.kind in ("sft", "distill")}
    assert configs["gxkd-seed-2"].config.seed == 2 and configs["gxkd-seed-2"].config.student == "student-seed-2"
    assert configs["gxkd-seed-2"].record == {"seed": 2, "seed_group": "gxkd"}
    sweep_point = configs["gxkd-lam-0.01-seed-2"]
    assert (sweep_point.config.seed, sweep_point.config.lam, sweep_point.config.student) == (2, 0.01, "student-seed-2")
    assert sweep_point.record == {"sweep": {"param": "lam", "value": 0.01, "method": "gxkd"}, "seed": 2,
                                  "seed_group": "gxkd-lam-0.01"}
    assert configs["gxkd-reward_position-current-seed-1"].config.reward_position == "current"
    assert configs["student-seed-1"].config.seed == 1
    text = xkd("pipeline", write(tmp_path, SEEDED), "--dry-run")
    assert text.code == 0 and "gxkd-seed-2" in text.out
    without = xkd("pipeline", write(tmp_path, SEEDED.replace("seed_students: true\n", "")), "--dry-run", "--json")
    names = [s["name"] for s in without.json()["steps"] if s["kind"] in ("sft", "distill")]
    assert names[:3] == ["teacher", "student", "gkd-seed-1"]


def test_sweep_set_fixes_options_at_each_point(xkd, runs, tmp_path):
    """A sweep's `set` crosses it with fixed options (the λ sweep at the other reward position): run names
    and sweep records say so, and each config has both values."""
    recipe = SEEDED.replace("sweep: [", "sweep: [{param: lam, values: [0.1], methods: [gxkd], set: {reward-position: current}}, ")
    steps = plan(write(tmp_path, recipe), runs)
    point = next(s for s in steps if s.name == "gxkd-lam-0.1-reward_position-current-seed-2")
    assert (point.config.lam, point.config.reward_position, point.config.seed) == (0.1, "current", 2)
    assert point.record == {"sweep": {"param": "lam", "value": 0.1, "method": "gxkd",
                                      "set": {"reward_position": "current"}},
                            "seed": 2, "seed_group": "gxkd-lam-0.1-reward_position-current"}
    assert next(s for s in steps if s.name == "gxkd-lam-0.01-seed-1").config.reward_position == "next"


@pytest.mark.parametrize("text,words", [
    ("tasks: [synth-mt]\nsweep: {param: lam, values: [0.1], set: current}\n", ["'set'", "reward_position: current"]),
    ("tasks: [synth-mt]\nsweep: {param: lam, values: [0.1], set: {lam: 0.2}}\n", ["'set'"]),
    ("tasks: [synth-mt]\nsweep: {param: student, values: [tiny-t5-base], set: {lam: 0.2}}\n", ["size sweep"]),
    ("tasks: [synth-mt]\nsweep: {param: lam, values: [0.1], set: {lamb: 0.2}}\n", ["lamb"]),
    ("tasks: [synth-mt]\nseeds: 3\n", ["'seeds'", "list of integers"]),
    ("tasks: [synth-mt]\nseeds: [1, 1]\n", ["twice"]),
    ("tasks: [synth-mt]\nseed_students: true\n", ["needs 'seeds'"]),
])
def test_bad_seeds_are_refused(xkd, runs, tmp_path, text, words):
    result = xkd("pipeline", write(tmp_path, text), "--dry-run")
    assert result.code == 2 and all(w in result.err for w in words), result.err


@pytest.mark.parametrize("text,words", [
    ("tasks: [synth-mt]\nmethod: [gkd]\n", ["unknown key 'method' in recipe", "Did you mean 'methods'?"]),
    ("tasks: [synth-mt]\nsweep: {param: lam, vals: [1]}\n", ["unknown key 'vals'", "section 'sweep'",
                                                               "Did you mean 'values'?"]),
    ("tasks: [synth-mt]\nmethods: [gkd]\neval: {limt: 2}\n", ["unknown key 'limt'", "section 'eval'",
                                                               "Did you mean 'limit'?"]),
    ("tasks: [synth-mt]\nmethods: [gkd]\nmethod_options: {gkd: 3}\n", ["'method_options' must map each method"]),
    ("tasks: [synth-mt]\nmethods: [gkd]\neval: {max_output_len: 4, max_new_tokens: 5}\n", ["two spellings"]),
])
def test_the_recipe_is_a_config_with_did_you_mean(xkd, runs, tmp_path, text, words):
    result = xkd("pipeline", write(tmp_path, text), "--dry-run")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    for word in words:
        assert word in result.err


def test_sections_take_either_spelling_of_the_output_length(runs, tmp_path):
    recipe = ("tasks: [synth-mt]\nmethods: [gkd]\nstudent: {max_new_tokens: 9}\ndistill: {max-new-tokens: 7}\n"
              "eval: {max_output_len: 5}\n")
    steps = plan(write(tmp_path, recipe), runs)
    lengths = {(s.kind, s.name): getattr(s.config, "max_output_len", None) or s.config.max_new_tokens for s in steps}
    assert lengths[("sft", "student")] == 9 and lengths[("distill", "gkd")] == 7 and lengths[("eval", "gkd")] == 5


AVA = """
task: synth-sum-pref
methods: []
student: {model: tiny-t5-small, max_steps: 2, batch_size: 2, max_input_len: 40, max_output_len: 10, train_fraction: 0.01}
reward_model_methods: [bt, ava-p]
reward_model: {max_steps: 2, batch_size: 2, max_input_len: 40, max_output_len: 10, train_fraction: 0.01, eval_pairs: 6,
               lam: 0.01}
align_methods: [dpo, ava-p]
align: {max_steps: 2, batch_size: 2, max_input_len: 40, max_output_len: 10, train_fraction: 0.01, dpo_beta: 0.2}
align_reward_model: ava-p
seeds: [1, 2]
eval: {limit: 3, max_new_tokens: 6}
"""


def test_ava_pipeline_trains_reward_models_and_policies_then_reports_them(xkd, runs, tmp_path):
    """Reward models from the student's base model and policies from the SFT student, once per seed; a shared
    section's option goes to the methods that read it (lam: not bt; dpo_beta: dpo only); no teacher without
    distillation methods; the report has both AVA tables."""
    recipe = write(tmp_path, AVA)
    steps = plan(recipe, runs)
    assert [(s.kind, s.name) for s in steps if s.kind != "eval"] == [
        ("sft", "student"), ("reward-model", "rm-bt-seed-1"), ("reward-model", "rm-bt-seed-2"),
        ("reward-model", "rm-ava-p-seed-1"), ("reward-model", "rm-ava-p-seed-2"), ("align", "align-dpo-seed-1"),
        ("align", "align-dpo-seed-2"), ("align", "align-ava-p-seed-1"), ("align", "align-ava-p-seed-2")]
    by_name = {s.name: s for s in steps if s.kind != "eval"}
    assert by_name["rm-bt-seed-1"].config.lam is None and by_name["rm-ava-p-seed-2"].config.lam == 0.01
    assert by_name["rm-ava-p-seed-2"].config.model == "tiny-t5-small" and by_name["rm-ava-p-seed-2"].config.seed == 2
    assert by_name["align-dpo-seed-1"].config.dpo_beta == 0.2 and by_name["align-ava-p-seed-1"].config.dpo_beta is None
    assert by_name["align-ava-p-seed-1"].config.model == "student"
    evals = [s for s in steps if s.kind == "eval"]
    assert [s.name for s in evals] == ["student", "align-dpo-seed-1", "align-dpo-seed-2", "align-ava-p-seed-1",
                                       "align-ava-p-seed-2"]
    assert {s.config.reward_model for s in evals} == {"rm-ava-p-seed-1"}  # one scorer for every policy

    # the run itself with one reward model (each costs as much as the planned ones: the plan above shows them all)
    result = xkd("pipeline", write(tmp_path, AVA.replace("[bt, ava-p]", "[ava-p]")), "--json")
    assert result.code == 0, result.err
    report = result.json()["report"]
    assert [(r["method"], r["n"]) for r in report["reward_models"]] == [("ava-p", 2)]
    assert [(r["method"], r.get("n")) for r in report["alignment"]] == [("student", 1), ("dpo", 2), ("ava-p", 2)]
    assert report["alignment"][2]["difference"]["label"] == "AVA-p − DPO"
    assert all(r["reward_model"]["run"] == "rm-ava-p-seed-1" for r in report["alignment"])
    record = json.loads((runs / "synth-sum-pref" / "align-ava-p-seed-2" / "run.json").read_text())
    assert (record["kind"], record["seed"], record["seed_group"]) == ("align", 2, "align-ava-p")


@pytest.mark.parametrize("text, words", [
    ("task: synth-sum-pref\nmethods: []\nreward_model_methods: [bt]\nreward_model: {lam: 0.1}\n",
     "pipeline section 'reward_model' sets lam, which none of its methods (bt) reads"),
    ("task: synth-sum-pref\nmethods: []\nalign_methods: [ava-p]\nalign: {dpo_beta: 0.1}\n",
     "pipeline section 'align' sets dpo_beta, which none of its methods (ava-p) reads"),
    ("task: synth-sum-pref\nmethods: []\nalign_methods: [bt]\n", "pipeline key 'align_methods' names 'bt'"),
    ("task: synth-sum-pref\nmethods: []\nalign: {max_step: 3}\n", "max_steps"),
    ("task: synth-sum-pref\nmethods: []\nreward_model_methods: [bt]\nalign_reward_model: ava-p\n",
     "pipeline key 'align_reward_model' must name one of reward_model_methods (bt), got 'ava-p'"),
])
def test_bad_ava_recipes_are_refused(xkd, runs, tmp_path, text, words):
    result = xkd("pipeline", write(tmp_path, text), "--dry-run")
    assert result.code == 2 and words in result.err, result.err
