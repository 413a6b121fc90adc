"""``xkd eval``, ``xkd diversity`` and ``xkd judge``: thin commands over the evaluation stage; their options come
from ``xkd_cli.config.evaluation``."""

from __future__ import annotations

from typing import Any

from xkd_cli.cli.options import config_command
from xkd_cli.config.defaults import make_config
from xkd_cli.config.evaluation import JUDGE_CACHE_FILE, BestOfNConfig, DiversityConfig, EvalConfig, JudgeConfig
from xkd_cli.core.ui import emit, out, paths, table
from xkd_cli.core.workspace import runs_root
from xkd_cli.data.taskfile import task_of
from xkd_cli.evaluation.reward_runs import locate_reward_model
from xkd_cli.training.preflight import check_models, check_task

STEERING = ("recipe", "runs_dir", "overwrite", "json")

EVAL_EPILOG = ("Examples:\n\n  xkd eval --model sft-tiny-t5-large --task synth-sum\n\n"
               "  xkd eval --model ./my-model --task xsum --data ./xsum --limit 100\n\n"
               "  xkd eval --model teacher --task synth-mt --temperature 1.0 --top-p 0.95 --num-samples 4 --json\n\n"
               "  xkd eval --model student --task synth-sum-pref --reward-model rm-bt-tiny-t5-small\n\n"
               "--reward-model adds the mean score a reward model gives the predictions (95% bootstrap interval over "
               "inputs). A best-of-n run is scored as it is: nothing is generated.")
BEST_OF_N_EPILOG = ("Examples:\n\n  xkd best-of-n --model student --reward-model rm-ava-p-tiny-t5-small "
                    "--task synth-sum-pref --n 8 --name bon8\n\n"
                    "  xkd best-of-n -m ./policy --reward-model runs/synth-sum-pref/rm-bt-tiny-t5-small "
                    "--task synth-sum-pref --n 4 --temperature 0.7 --top-p 0.95 --limit 200 --json\n\n"
                    "  xkd eval --model bon8 --task synth-sum-pref --reward-model rm-bt-tiny-t5-small\n\n"
                    "  OPENAI_API_KEY=... xkd judge --a bon8 --b student --task synth-sum-pref\n\n"
                    "The chosen answers are a run (<runs>/<task>/<name>/eval/<split>-greedy/predictions.jsonl, "
                    "each row with all N samples and their scores) that eval, judge and report take like the greedy "
                    "answers of a model. The reward model reads the text with its own tokenizer. Resumable: the "
                    "same command continues.")
DIVERSITY_EPILOG = ("Examples:\n\n  xkd diversity --model student --model gxkd --task synth-mt\n\n"
                    "  xkd diversity -m gkd -m gxkd --task xsum --temperatures 0.1,0.3,0.5,1.0 --num-samples 4 --limit 500\n\n"
                    "  xkd diversity --model tiny-t5-small --task synth-mt --limit 3 --num-samples 2 "
                    "--temperatures 0.5,1.0 --json")
JUDGE_EPILOG = ("Examples:\n\n  OPENAI_API_KEY=... xkd judge --a seqxkd --b seqkd --task xsum --limit 200\n\n"
                "  OPENAI_API_KEY=... xkd judge --a seqxkd --b seqkd --judge-model gpt-4o --concurrency 4 --json\n\n"
                "  OPENAI_API_KEY=local xkd judge --a gxkd-seed-1 --b gkd-seed-1 --task synth-sum "
                "--base-url http://localhost:8000/v1 --judge-model meta-llama/Meta-Llama-3-8B-Instruct\n\n"
                f"Answers are cached in <runs-dir>/{JUDGE_CACHE_FILE}: a re-run makes no API call. "
                "Rates are percent of the items whose both orders were parsed.")


@config_command(EvalConfig, *STEERING, first=("model", "task", "name", "data"))
def eval_(flags: dict[str, Any], *, recipe, runs_dir, overwrite, json) -> None:
    """Generate on the task's evaluation split and score it (ROUGE, BLEU or accuracy)."""
    root = runs_root(runs_dir)
    cfg = make_config(EvalConfig, flags, recipe=recipe, runs_root=root)
    check_models([cfg.model], check_task(cfg).name, root, answers_ok=True)
    reward_model_of(cfg, root)
    from xkd_cli.evaluation.evaluate import run_eval  # torch and transformers load only once the options are valid

    emit(run_eval(cfg, runs_root=root, overwrite=overwrite), as_json=json, render=render_eval)


def reward_model_of(cfg, root):
    """The reward model a config names (``--reward-model``), located before torch loads: a run that is missing or
    is not a reward model is refused here, in one line."""
    if not getattr(cfg, "reward_model", None):
        return None
    return locate_reward_model(cfg.reward_model, task=task_of(cfg).name, runs_root=root)


def interval_text(summary: dict) -> str:
    return f"{summary['mean']:.4g} [{summary['low']:.4g}, {summary['high']:.4g}]"


def render_eval(result: dict) -> None:
    metrics = result["metrics"]
    rows = [(("* " if key == result["headline"] else "") + key, value) for key, value in metrics.items()
            if not key.endswith("signature")]
    rm = result.get("reward_model")
    if rm:
        rows.append((f"reward-model score ({rm['run']}, {rm['method']}, {rm['reward']}; 95% interval)",
                     interval_text(rm)))
    out.print(table(f"{result['task']} · {result['run']} · {result['split']} · {result['decoding']} · "
                    f"{result['examples']} examples", ["metric", "value"], rows))
    for key, value in metrics.items():
        if key.endswith("signature"):
            out.print(f"{key}: {value}")
    paths(predictions=result["predictions"])


@config_command(BestOfNConfig, *STEERING, first=("model", "reward_model", "n", "task", "name", "data"))
def best_of_n(flags: dict[str, Any], *, recipe, runs_dir, overwrite, json) -> None:
    """Sample N responses per prompt of the task's evaluation split with a policy, score each with a reward model
    (xkd reward-model), keep the highest; the chosen answers are a run that eval, judge and report take."""
    root = runs_root(runs_dir)
    cfg = make_config(BestOfNConfig, flags, recipe=recipe, runs_root=root)
    files = reward_model_of(cfg, root)
    from xkd_cli.evaluation.best_of_n import run_best_of_n  # torch loads only once the options and runs are valid

    emit(run_best_of_n(cfg, runs_root=root, overwrite=overwrite, rm_files=files), as_json=json,
         render=render_best_of_n)


def render_best_of_n(result: dict[str, Any]) -> None:
    rm, score, metric = result["reward_model"], result["reward_model_score"], result["metric"]
    rows = [(f"RM score ({rm['reward']} μ)", interval_text(score["first"]), interval_text(score["chosen"]),
             interval_text(score["gain"])),
            (metric["name"], metric.get("first"), metric.get("chosen"), metric.get("gain"))]
    out.print(table(f"{result['task']} · best-of-{result['n']} · {result['run']} · {result['split']} · "
                    f"{result['examples']} prompts · mean [95% interval]",
                    ["", "first sample", f"best of {result['n']}", "gain"], rows))
    info = [("policy", result["model"]), ("reward model", f"{rm['run']} ({rm['method']}, reward = {rm['reward']} μ)"),
            ("decoding", result["decoding"]),
            ("reward-model score, all samples", interval_text(score["all"])),
            ("prompts whose first sample was chosen", f"{result['chosen_first']} of {result['examples']}"),
            ("new prompts sampled", result["new_prompts"]), ("time (s)", result["seconds"])]
    out.print(table("", ["", "value"], info))
    paths(run=result["path"], predictions=result["predictions"])


@config_command(DiversityConfig, *STEERING, first=("models", "task", "name", "data"))
def diversity(flags: dict[str, Any], *, recipe, runs_dir, overwrite, json) -> None:
    """Quality vs diversity: sample each model at several temperatures, score the task metric and SelfBLEU,
    plot metric against diversity (100 − SelfBLEU); resumable. Results: <runs>/<task>/<name>/ (default name
    'diversity'): diversity.csv, .json, .png, .svg. --overwrite also regenerates the evaluations."""
    root = runs_root(runs_dir)
    cfg = make_config(DiversityConfig, flags, recipe=recipe, runs_root=root)
    check_models(list(cfg.models), check_task(cfg).name, root)
    from xkd_cli.evaluation.diversity import run_diversity  # torch and transformers load only once the options are valid

    emit(run_diversity(cfg, runs_root=root, overwrite=overwrite), as_json=json, render=render_diversity)


def render_diversity(result: dict[str, Any]) -> None:
    label = result["metric_label"]
    rows = [(r["model"], f"{r['temperature']:g}", r["value"], r["self_bleu"], r["diversity"]) for r in result["rows"]]
    out.print(table(f"{result['task']} · {result['run']} · {result['split']} · top-p {result['top_p']:g} · "
                    f"{result['num_samples']} samples × {result['examples']} inputs",
                    ["model", "temperature", label, "SelfBLEU", "diversity"], rows))
    files = result["files"]
    out.print(f"figure: {files['png']} (and .svg)")
    out.print(f"table: {files['csv']}, {files['json']}")


@config_command(JudgeConfig, *STEERING, first=("a", "b", "task", "name", "data"))
def judge(flags: dict[str, Any], *, recipe, runs_dir, overwrite, json) -> None:
    """Pairwise LLM-judge win / tie / lose rates of run A against run B (both answer orders; Table 2)."""
    root = runs_root(runs_dir)
    cfg = make_config(JudgeConfig, flags, recipe=recipe, runs_root=root)
    from xkd_cli.evaluation.judge import run_judge  # loads the API client only once the options are valid

    emit(run_judge(cfg, runs_root=root, overwrite=overwrite), as_json=json, render=render_judge)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def render_judge(result: dict[str, Any]) -> None:
    j = result["judge"]
    rows = [("inputs judged", f"{result['items']} (shared by both: {result['shared']}; "
                              f"{result['a']}: {result['predictions_a']}, {result['b']}: {result['predictions_b']})"),
            (f"win ({result['a']} better)", f"{_rate(result['win_rate'])} ({result['win']})"),
            ("tie", f"{_rate(result['tie_rate'])} ({result['tie']})"),
            (f"lose ({result['b']} better)", f"{_rate(result['lose_rate'])} ({result['lose']})"),
            ("orders disagree", f"{_rate(result['inconsistency_rate'])} ({result['inconsistent']})"),
            ("unparsed (left out)", result["unparsed"]),
            ("judge", f"{j['model']} at {j['api_base']}"),
            ("template", f"{j['template']} v{j['template_version']}"),
            ("decoding", f"temperature {j['temperature']:g}, max {j['max_tokens']} tokens"),
            ("API requests", f"{result['requests']} ({result['retries']} retries, {result['reasks']} re-asks, "
                             f"{result['cached']} cached answers)"),
            ("time (s)", result["seconds"])]
    out.print(table(f"{result['task']} · judge · {result['a']} vs {result['b']} · {result['split']}", ["", "value"], rows))
    paths(verdicts=result["verdicts"])
