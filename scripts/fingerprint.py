"""A behaviour fingerprint for refactors: a tiny run of every training method through the real CLI, each
step's logged loss terms and a SHA-256 of the trained weights (and of the reward head, where there is one).

    python scripts/fingerprint.py --out before.json      # on the old code
    python scripts/fingerprint.py --out after.json       # on the new code
    python scripts/fingerprint.py --compare before.json after.json

Two fingerprints are equal only when every method logged the same loss at every step and saved
bit-identical weights. About two minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

COMMON = ["--task", "synth-mt", "--max-steps", "4", "--batch-size", "4", "--max-input-len", "48",
          "--max-output-len", "12", "--log-every", "1", "--warmup-steps", "1"]
T5 = ["--teacher", "tiny-t5-base", "--student", "tiny-t5-small"]
GPT = ["--teacher", "tiny-gpt-large", "--student", "tiny-gpt-small"]
LOG_KEYS = ("loss", "nll", "kd", "ex", "pg", "rkl", "grad_norm", "lr", "ex_delta_mean", "ex_mu_mean", "student_samples")

# name -> the command's arguments after COMMON
RUNS: dict[str, list[str]] = {
    "sft-t5": ["sft", "--model", "tiny-t5-small", "--role", "student"],
    "sft-gpt": ["sft", "--model", "tiny-gpt-small", "--role", "student"],
    **{f"{m}-t5": ["distill", "--method", m, *T5] for m in ("skd", "sxkd", "gkd", "gxkd", "minillm")},
    **{f"{m}-gpt": ["distill", "--method", m, *GPT] for m in ("skd", "sxkd", "gkd", "gxkd", "minillm")},
    "sxkd-current-t5": ["distill", "--method", "sxkd", *T5, "--reward-position", "current", "--lam", "0.5",
                        "--gamma", "0.9", "--tau", "2"],
    "gkd-rkl-beta-t5": ["distill", "--method", "gkd", *T5, "--divergence", "jsd", "--beta", "0.3", "--alpha", "0.75"],
    "minillm-mix-gpt": ["distill", "--method", "minillm", *GPT, "--mix", "0.4"],
    "gxkd-cache-t5": ["distill", "--method", "gxkd", *T5, "--teacher-cache", "full"],
    "gkd-xtok": ["distill", "--method", "gkd", "--teacher", "tiny-gpt-large", "--student", "tiny-chat-small",
                 "--cross-tokenizer", "shared"],
    "seqkd-t5": ["distill", "--method", "seqkd", "--student", "tiny-t5-small"],
    "seqxkd-t5": ["distill", "--method", "seqxkd", "--student", "tiny-t5-small"],
}


def digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    from safetensors.torch import load_file  # only when a run saved something

    tensors = load_file(path)
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint(only: list[str] | None) -> dict:
    from xkd_cli.cli.app import main

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        os.environ["XKD_RUNS_DIR"] = str(runs)
        teacher = ["gen-teacher", "--teacher", "tiny-t5-base", "--task", "synth-mt", "--limit", "8",
                   "--num-samples", "2", "--max-new-tokens", "10", "--max-input-len", "48", "--json"]
        for name, args in RUNS.items():
            if only and name not in only:
                continue
            if name.startswith("seq") and not (runs / "synth-mt" / "teacher").exists():
                run_cli(main, teacher)
            run_cli(main, [*args, *COMMON, "--name", name, "--json"])
            run = runs / "synth-mt" / name
            steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
            out[name] = {"steps": [{k: s[k] for k in LOG_KEYS if k in s} for s in steps],
                         "weights": digest(run / "model" / "model.safetensors")
                         or digest(run / "model" / "adapter_model.safetensors"),
                         "reward_head": digest(run / "reward_head.safetensors")}
            print(f"{name}: loss {steps[-1]['loss']:.6f} weights {out[name]['weights'][:12]}", file=sys.stderr)
    return out


def run_cli(main, args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise SystemExit(f"`xkd {' '.join(args)}` exited {exc.code}")


def compare(a: dict, b: dict) -> int:
    differ = 0
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        # a log key only one side writes (a counter a refactor added or dropped) is no difference in behaviour
        same = x is not None and y is not None and x["weights"] == y["weights"] and \
            x["reward_head"] == y["reward_head"] and len(x["steps"]) == len(y["steps"]) and \
            all(s[k] == t[k] for s, t in zip(x["steps"], y["steps"]) for k in s.keys() & t.keys())
        differ += not same
        print(f"{'same' if same else 'DIFFERENT':<10}{name}")
    print(f"{len(set(a) | set(b)) - differ} same, {differ} different")
    return 1 if differ else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--compare", nargs=2, type=Path)
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*(json.loads(p.read_text()) for p in args.compare)))
    result = fingerprint(args.only)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
