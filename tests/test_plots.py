"""`xkd_cli.evaluation.plots`: curves per series, point annotations, dashed baselines, PNG + SVG written without a display."""

import xml.etree.ElementTree as ET

import pytest

from xkd_cli.core.errors import XKDError
from xkd_cli.evaluation.plots import Baseline, Series, metric_label, output_paths, plot_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def svg_texts(path):
    """Every piece of text in an SVG written with svg.fonttype none (plus its raw source)."""
    root = ET.parse(path).getroot()  # raises when the file is not well-formed XML
    assert root.tag.endswith("svg")
    return " ".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith("text"))


def two_series():
    return [Series("student", [10.0, 20.0, 40.0], [30.0, 28.0, 21.0], ["T=0.1", "T=0.5", "T=1"]),
            Series("gxkd", [12.0, 25.0, 45.0], [33.0, 31.0, 25.0], ["T=0.1", "T=0.5", "T=1"])]


def test_series_annotations_baselines_in_png_and_svg(tmp_path):
    paths = plot_curves(two_series(), xlabel="Diversity (100 - SelfBLEU)", ylabel="ROUGE-2", title="xsum sweep",
                        baselines=[Baseline("teacher", 35.0), Baseline("greedy student", 29.0)],
                        legend_title="model", stem=tmp_path / "figs" / "sweep")
    assert paths == {"png": tmp_path / "figs" / "sweep.png", "svg": tmp_path / "figs" / "sweep.svg"}
    png = paths["png"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    text = svg_texts(paths["svg"])
    for expected in ("Diversity (100 - SelfBLEU)", "ROUGE-2", "xsum sweep", "model", "student", "gxkd",
                     "teacher", "greedy student", "T=0.1", "T=0.5", "T=1"):
        assert expected in text, expected
    assert text.count("T=0.5") == 2  # one annotation per point of each series
    source = paths["svg"].read_text()
    # two dashed baselines, each drawn in the plot and in the legend
    assert source.count("stroke-dasharray") >= 4


def test_vertical_baseline_single_format_and_missing_points(tmp_path):
    series = [Series("a", [0.0, 1e-4, 1e-3, None], [1.0, float("nan"), 3.0, 4.0], ["λ=0", "λ=1e-4", "λ=1e-3", "x"])]
    paths = plot_curves(series, xlabel="λ", ylabel="BLEU", stem=tmp_path / "lam.t0.5", formats=("svg",),
                        baselines=[Baseline("chosen λ", 1e-3, axis="x")], xscale="symlog",
                        xticks=[0, 1e-4, 1e-3], xticklabels=["0", "1e-4", "1e-3"])
    assert list(paths) == ["svg"] and paths["svg"].name == "lam.t0.5.svg"
    assert not (tmp_path / "lam.t0.5.png").exists()
    text = svg_texts(paths["svg"])
    assert "λ=0" in text and "λ=1e-3" in text and "chosen λ" in text and "1e-4" in text
    assert "λ=1e-4" not in text and "x" not in text.split()  # the NaN and None points are left out
    assert "stroke-dasharray" in paths["svg"].read_text()


def test_same_numbers_give_the_same_svg(tmp_path):
    first = plot_curves(two_series(), xlabel="x", ylabel="y", stem=tmp_path / "a", formats=("svg",))
    second = plot_curves(two_series(), xlabel="x", ylabel="y", stem=tmp_path / "b", formats=("svg",))
    assert first["svg"].read_bytes() == second["svg"].read_bytes()


def test_coinciding_points_keep_every_annotation(tmp_path):
    series = [Series("a", [100.0, 100.0], [0.0, 0.0], ["T=0.5", "T=1"]),
              Series("b", [100.0, 100.0], [0.0, 0.0], ["T=0.5", "T=1"])]
    paths = plot_curves(series, xlabel="x", ylabel="y", stem=tmp_path / "same")
    assert svg_texts(paths["svg"]).count("T=") == 4


def test_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(XKDError, match="3 x values but 2 y values"):
        Series("a", [1, 2, 3], [1, 2])
    with pytest.raises(XKDError, match="annotations"):
        Series("a", [1, 2], [1, 2], ["only one"])
    with pytest.raises(XKDError, match="axis"):
        Baseline("b", 1.0, axis="z")
    with pytest.raises(XKDError, match="formats"):
        output_paths(tmp_path / "f", ("pdf",))
    with pytest.raises(XKDError, match="nothing to plot"):
        plot_curves([], xlabel="x", ylabel="y", stem=tmp_path / "empty")
    assert not list(tmp_path.iterdir())


def test_metric_labels():
    assert metric_label("rouge2") == "ROUGE-2"
    assert metric_label("rougeL") == "ROUGE-L"
    assert metric_label("bleu") == "BLEU"
    assert metric_label("accuracy") == "Accuracy"
    assert "SelfBLEU" in metric_label("diversity")
    assert metric_label("tokens_per_s") == "Tokens per s"
