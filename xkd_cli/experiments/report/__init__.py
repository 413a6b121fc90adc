"""The report behind ``xkd report``: the paper's tables and figures from what is on disk, every number traced to its file.

Nothing is computed here: the report reads the runs directory (one task with ``--task``, or all of it)
and writes, by default to ``<runs>/report/`` (``<runs>/report-<task>/`` with ``--task``):

* ``table1.csv`` — the Table-1 layout: rows SFT student, the seven methods (their default runs, i.e.
  distill runs without a ``sweep`` record, by paper name), the teacher; one column per task; each cell
  the headline metric (ROUGE-2 / BLEU / accuracy) of the run's greedy evaluation
  (``<run>/eval/<split>-greedy/metrics.json``, the task's evaluation split preferred).
* ``judge.csv`` — the Table-2 layout: one row per judge run (A vs B, win / tie / lose %, orders that
  disagree %, judged items, judge model), read from its ``results.json``.
* ``figures/<task>-<param>.png`` / ``.svg`` — one figure per task and swept parameter of the distill runs
  the pipeline marked with ``sweep`` (one curve per method): metric vs training-data fraction (Figure
  1d–f), vs λ (Figure 3), vs τ′ (Figure 4, with the default runs of the matching non-experiential methods
  as dashed lines), vs teacher / student size (Figure 2; x is the SFT'd model's parameter count from its
  ``run.json``, else the size label). Diversity figures already drawn by ``xkd diversity`` are linked.
* ``sweeps.csv`` — every figure point and baseline, one per line.
* seeds — a method the pipeline ran once per seed (``seed_group`` / ``seed`` in ``run.json``) is one
  Table-1 cell: mean ± sample sd over its seeds, each seed's file kept.
* ``differences.csv`` and ``figures/<task>-differences.png`` / ``.svg`` — each X-variant minus its
  baseline, paired by seed and example, with a 95% paired-bootstrap interval over examples and seeds,
  from the runs' ``eval/<split>-greedy/scores.jsonl`` (:mod:`.differences`, :mod:`.stats`); judge rates
  get Wilson intervals.
* degenerate samples — a distilled run whose step log shows its samples' distinct-token share halved, or whose
  greedy predictions keep under half the references' share of distinct words, is flagged under Table 1
  (:mod:`.degenerate`; ``degenerate`` in ``report.json``).
* ``report.json`` — all of the above with, for each number, the file it was read from (relative to the
  runs directory); ``--json`` prints it.
* ``report.md`` — the tables and the figures (relative links) and a "Sources" section naming the
  ``metrics.json`` / ``results.json`` / ``run.json`` behind every cell and point.

The report is derived data: re-running rewrites it (figures of sweeps that are gone are removed).
"""
