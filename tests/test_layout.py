"""The package's shape: imports flow one way (down the layers in scripts/import_graph.py, no cycle), an import
inside a function says why, modules stay readable, and the command line starts without torch."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import import_graph  # noqa: E402

# Modules that are data written as code (tables of words and templates), allowed past the size limit.
DATA_AS_CODE: set[str] = set()
MAX_LINES = 500

def test_no_import_cycle():
    edges, _ = import_graph.graph()
    assert import_graph.cycles(edges) == []


def test_the_cycle_finder_finds_cycles():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_graph.cycles({"a": {"b"}, "b": set()}) == []


def test_imports_flow_down_the_layers():
    edges, _ = import_graph.graph()
    upward = import_graph.upward(edges)
    assert not upward, f"imports up the layers {import_graph.LAYERS} (move the module down or the import up): {upward}"


def test_the_direction_check_finds_upward_imports():
    layers = ("low", "high")
    edges = {"p.low.a": {"p.low.b", "p.high.c", "p"}, "p.low.b": set(), "p.high.c": {"p.low.a"},
             "p.__main__": {"p.high.c"}, "p": {"p.__main__"}}
    assert import_graph.upward(edges, layers) == [("p", "p.__main__"), ("p.low.a", "p.high.c")]
    assert import_graph.upward({"p.high.c": {"p.low.a", "p"}, "p.low.a": set(), "p": set()}, layers) == []
    with pytest.raises(ValueError, match="p.other.x is in no layer"):
        import_graph.upward({"p.other.x": {"p.low.a"}}, layers)


def test_every_import_inside_a_function_says_why():
    _, inner = import_graph.graph()
    silent = [f"{i.path.relative_to(ROOT)}:{i.line}: {i.text}" for i in inner if "#" not in i.text]
    assert silent == []


@pytest.mark.parametrize("path", sorted((ROOT / "xkd_cli").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_readable(path):
    if str(path.relative_to(ROOT)) in DATA_AS_CODE:
        return
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_command_line_starts_without_torch():
    code = "import sys, xkd_cli.cli.app; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
