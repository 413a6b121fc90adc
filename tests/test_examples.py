"""Every example a new user is shown runs as written: the examples of every ``--help`` epilog and the ``xkd``
lines of README.md's command blocks. Each parses against the real command (every flag exists, every value has
its type), every recipe file it names exists, every model it names is a built-in model, a hub id or alias, a
path, or a run that an earlier example (or the main job) makes; the cheap ones run for real, and README.md's
commands all run, in order, cut to a few steps (test_readme_commands_run_in_order)."""

import re
import sys
import shlex
from pathlib import Path

import pytest
import typer

from xkd_cli.cli.app import app
from xkd_cli.config.defaults import make_config
from xkd_cli.core.workspace import slug
from xkd_cli.config.training import DistillConfig, SFTConfig
from xkd_cli.experiments.pipeline import plan
from xkd_cli.models.references import HUB_ALIASES, resolve_model

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = typer.main.get_command(app).commands
MODEL_FLAGS = ("--model", "-m", "--teacher", "--student", "--a", "--b")
TRAINING_CONFIGS = {"sft": SFTConfig, "distill": DistillConfig}


def _commands(line: str) -> list[list[str]]:
    """One shell line → its commands (split at `&&`, with env assignments and `# comments` dropped)."""
    calls = []
    for part in line.split("&&"):
        words = shlex.split(part, comments=True)
        while words and re.match(r"^[A-Z_]+=", words[0]):
            words.pop(0)
        if words:
            calls.append(words)
    return calls


def _split(line: str) -> list[list[str]]:
    """One shell line → the arguments of its xkd invocations."""
    return [words[1:] for words in _commands(line) if words[0] in ("xkd", ".venv/bin/xkd")]


def epilog_examples() -> list[tuple[str, list[str]]]:
    found = []
    for name, command in COMMANDS.items():
        for line in (command.epilog or "").splitlines():
            found += [(f"xkd {name} --help", argv) for argv in _split(line.strip())]
    return found


def readme_commands() -> list[list[str]]:
    """Every command of README.md's bash blocks, in order (a block's `T=path` lines used as $T below them)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        variables: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            if "…" in line or "..." in line.split("#")[0].replace("OPENAI_API_KEY=...", ""):
                continue  # a placeholder for the user's own values, not an example
            assignment = re.fullmatch(r"([A-Z_]+)=(\S+)", line.strip())
            if assignment:
                variables[assignment[1]] = assignment[2]
                continue
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            found += _commands(line)
    return found


def readme_examples() -> list[tuple[str, list[str]]]:
    return [("README.md", words[1:]) for words in readme_commands() if words[0] in ("xkd", ".venv/bin/xkd")]


EXAMPLES = epilog_examples() + readme_examples()


def _flag_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in flags]


def _made_runs() -> set[str]:
    """Run names the examples and the main job make: SFT runs, --name, distilled methods, reward models and
    aligned policies, the pipeline's roles."""
    names = {"teacher", "student"}
    for _, argv in EXAMPLES:
        if argv[0] == "sft":
            names.update(f"sft-{m}" for m in _flag_values(argv, ("--model",)))
        if argv[0] == "distill":
            names.update(_flag_values(argv, ("--method",)))
        if argv[0] in ("align", "reward-model") and "--name" not in argv:  # their default names
            prefix = "align" if argv[0] == "align" else "rm"
            names.update(f"{prefix}-{m}-{slug(model)}" for m in _flag_values(argv, ("--method",))
                         for model in _flag_values(argv, ("--model",)))
        names.update(_flag_values(argv, ("--name",)))
    for recipe in (ROOT / "recipes" / "pipeline").glob("offline-quick.yaml"):
        names.update(step.name for step in plan(recipe, ROOT / "no-runs"))
    return names


def test_examples_are_collected():
    where = {w for w, _ in EXAMPLES}
    assert {f"xkd {name} --help" for name in COMMANDS} <= where and "README.md" in where
    assert len(EXAMPLES) > 30


@pytest.mark.parametrize("where, argv", EXAMPLES, ids=[" ".join(a)[:70] for _, a in EXAMPLES])
def test_example_parses_and_its_references_resolve(where, argv):
    assert argv[0] in COMMANDS, f"{where}: unknown command {argv[0]}"
    command = COMMANDS[argv[0]]
    context = command.make_context(argv[0], list(argv[1:]))  # an unknown flag or a badly typed value raises here
    if argv[0] in TRAINING_CONFIGS:  # the options make a valid config (e.g. none the method does not read)
        cls = TRAINING_CONFIGS[argv[0]]
        flags = {k: v for k, v in context.params.items() if k in cls.__dataclass_fields__}
        recipe = context.params.get("recipe")
        if flags.get("task") is None and recipe is None:
            flags["task"] = "synth-sum"  # the examples that take it from the runs directory
        make_config(cls, flags, recipe=ROOT / recipe if recipe else None)
    for recipe in _flag_values(argv, ("--recipe", "--config_file")) + \
            ([argv[1]] if argv[0] == "pipeline" and len(argv) > 1 else []):
        assert (ROOT / recipe).is_file(), f"{where}: `xkd {' '.join(argv)}` names a missing recipe {recipe}"
    made = _made_runs()
    for model in _flag_values(argv, MODEL_FLAGS):
        if model in made or model in HUB_ALIASES or model.startswith("./") or \
                (model.startswith("runs/") and Path(model).name in made):  # a run's folder in the default ./runs
            continue
        assert resolve_model(model)[0] in ("builtin", "hub"), f"{where}: unknown model {model}"


CHEAP = [argv for where, argv in EXAMPLES if "--dry-run" in argv and where != "README.md"] + [  # README's: below
    [name, "--help"] for name in COMMANDS] + [
    argv for _, argv in EXAMPLES if argv[0] == "diversity" and "tiny-t5-small" in argv]


@pytest.mark.parametrize("argv", CHEAP, ids=[" ".join(a)[:70] for a in CHEAP])
def test_cheap_examples_run(xkd, runs, argv):
    result = xkd(*argv)
    assert result.code == 0, result.err


# -- README.md's commands, run in order -----------------------------------------------------------------------------

# Cut to seconds: each training command runs 2 steps, each evaluation a few examples (the flags are replaced where the
# README gives them, added where it leaves the default); a pipeline is planned (--dry-run), not run.
CUT = {"--max-steps": "2", "--limit": "4", "--num-samples": "2", "--eval-pairs": "4", "--batch-size": "4"}
CUT_ADDED = {"sft": ("--max-steps", "--batch-size"), "distill": ("--max-steps", "--batch-size"),
             "reward-model": ("--max-steps", "--batch-size", "--eval-pairs"), "align": ("--max-steps", "--batch-size"),
             "best-of-n": ("--limit",), "eval": ("--limit",),
             "gen-teacher": ("--limit",), "diversity": ("--limit",), "reward": ("--limit",)}
# What the test does not run, and why.
NOT_RUN = {
    ("bash", "scripts/setup.sh"): "installs the environment this suite runs in",
    (".venv/bin/python", "-m", "pytest", "-q"): "the suite itself",
}
NEEDS_HUB = ("t5-large", "t5-small", "xsum")  # "On a real model, with a GPU": hub models and data (parsed above)


def _cut(argv: list[str], tmp: Path) -> list[str]:
    argv = [str(tmp / a[2:]) if a.startswith("./") else a for a in argv]  # --runs-dir ./study: a fresh folder
    for i, word in enumerate(argv[:-1]):
        if word in CUT:
            argv[i + 1] = CUT[word]
    for flag in CUT_ADDED.get(argv[0], ()):
        if flag not in argv:
            argv += [flag, CUT[flag]]
    if argv[0] == "pipeline" and "--dry-run" not in argv:
        argv.append("--dry-run")
    return argv


def test_readme_commands_run_in_order(xkd, runs, tmp_path, monkeypatch):
    """Every command of README.md's bash blocks, in the README's order, in one fresh runs directory: each exists and
    exits 0 (the judge lines: with no API key, the one-line refusal the README promises), each after the commands
    before it, as a newcomer runs them. Steps and examples are cut (CUT); NOT_RUN and NEEDS_HUB say what is skipped."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(ROOT)
    ran = []
    for words in readme_commands():
        if tuple(words) in NOT_RUN:
            assert words[0] != "bash" or (ROOT / words[1]).is_file(), words
            continue
        if words[:2] == ["source", ".venv/bin/activate"]:  # puts `xkd` on the PATH: the console script beside python
            assert (Path(sys.executable).parent / "xkd").is_file(), "no xkd console script beside the interpreter"
            continue
        assert words[0] in ("xkd", ".venv/bin/xkd"), f"README runs a command the test does not know: {words}"
        if any(model in words for model in NEEDS_HUB):
            continue
        argv = _cut(words[1:], tmp_path)
        result = xkd(*argv)
        if argv[0] == "judge":
            assert result.code == 2 and "no API key" in result.err, (argv, result.err)
        else:
            assert result.code == 0, f"`xkd {' '.join(argv)}` exited {result.code}: {result.err[-2000:]}"
        ran.append(argv[0])
    assert ran.count("sft") >= 6 and ran.count("distill") >= 5 and "report" in ran


def test_own_data_examples_are_what_make_data_writes(tmp_path, monkeypatch):
    """README's worked examples read files that examples/own-data/make_data.py writes: the same bytes again."""
    sys.path.insert(0, str(ROOT / "examples" / "own-data"))
    try:
        import make_data
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(make_data, "HERE", tmp_path)
    make_data.main()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    assert [str(p) for p in written] == [f"{d}/{s}.jsonl" for d in ("news", "translate")
                                         for s in ("test", "train", "validation")]
    for path in written:
        assert (tmp_path / path).read_bytes() == (ROOT / "examples" / "own-data" / path).read_bytes(), path
