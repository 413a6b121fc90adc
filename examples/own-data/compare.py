"""The paired difference of two evaluated runs of one task, with its 95% bootstrap interval: the report's statistic
(xkd_cli/experiments/report/stats.py) for any two runs, not only an X-variant and its baseline.

    python examples/own-data/compare.py runs/news skd:sft-tiny-t5-small skd:sft-more

Each X:B pair reads X's and B's eval/validation-greedy/scores.jsonl (written by `xkd eval`) and prints X − B over
the examples both scored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from xkd_cli.experiments.report.stats import paired_bootstrap


def scores(task_dir: Path, run: str) -> tuple[dict[str, list[float]], str]:
    path = task_dir / run / "eval" / "validation-greedy" / "scores.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["id"]: row["stats"] for row in rows}, rows[0]["metric"]


def main(argv: list[str]) -> None:
    task_dir = Path(argv[0])
    for pair in argv[1:]:
        x, b = pair.split(":")
        (sx, metric), (sb, _) = scores(task_dir, x), scores(task_dir, b)
        ids = [i for i in sx if i in sb]
        found = paired_bootstrap(np.array([[sx[i] for i in ids]]), np.array([[sb[i] for i in ids]]), metric)
        print(f"{x} − {b}: {metric} {found['diff']:+.2f} [{found['low']:+.2f}, {found['high']:+.2f}] "
              f"({found['examples']} examples)")


if __name__ == "__main__":
    main(sys.argv[1:])
