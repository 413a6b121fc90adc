"""``xkd reward``: what a reward head says about each token of a response, μ_t and σ_t of its Gaussian
q_φ = N(μ_t, σ_t²), with the model's own Q_t and TD error δ_t beside them (docs/method.md, "The experiential
term" and "The reward encoder").

The layout is training's (:mod:`xkd_cli.data.batches`): position ``t`` of a response is its token ``y_t`` and the
row of logits that predicts it. At that position

- μ_t, σ_t come from the reward head (:class:`~xkd_cli.objectives.reward.RewardHead`) on the hidden state its
  ``reward_position`` names: ``next`` reads h_{t+1}, the state that has read y_t (the paper's reading), so the
  last token reads a zero vector and its μ, σ are the head's biases; ``current`` reads h_t;
- Q_t = τ′·p(y_t) − logsumexp_v τ′·p(v) (Eq. 28, :func:`~xkd_cli.objectives.experiential.q_term`);
- δ_t = Q_t − γ·Q_{t+1} (Eq. 16), where the response has a next token (none at the last one).

Under F_ex the head learns q_φ(δ_t): δ_t should fall within μ_t ± σ_t. :func:`load_scorer` is the one place a
model and its head are loaded (a reward-model run plugs in there); :func:`score_tokens` is the computation;
:func:`run_reward_view` picks the responses and writes the views (:mod:`xkd_cli.evaluation.reward_pages`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from xkd_cli.config.checks import quantization_of
from xkd_cli.config.reward_view import RewardViewConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.core.runtime import resolve_device
from xkd_cli.core.workspace import write_json
from xkd_cli.data.batches import make_batch, special_ids
from xkd_cli.data.taskfile import get_task
from xkd_cli.data.tasks import Example
from xkd_cli.evaluation.reward_pages import nice_scale, write_figures, write_page
from xkd_cli.evaluation.reward_runs import ScorerFiles
from xkd_cli.models.chat import encode_example_prompts, encode_example_targets, stop_ids, use_chat_template
from xkd_cli.models.forward import forward
from xkd_cli.models.generate import Sampling, generate_batched
from xkd_cli.models.loaded_model import LoadedModel, model_vocab_size
from xkd_cli.models.loading import load_model
from xkd_cli.objectives.ava import response_reward
from xkd_cli.objectives.chunked import scatter_positions, term_columns, valid_mask
from xkd_cli.objectives.experiential import q_term
from xkd_cli.objectives.reward import RewardHead

OUTPUT_DIR = "reward"  # inside the run, unless --out says otherwise
FIGURE = re.compile(r"reward-\d+\.png")  # reward-<k>.png, as write_figures names them
WHOLE = 1 << 30  # a length limit that cuts nothing


@dataclass
class Scorer:
    """A language model with its reward head, and the run they came from."""
    loaded: LoadedModel
    head: RewardHead
    files: ScorerFiles


def load_scorer(files: ScorerFiles, *, runs_root: Path, dtype: str = "float32", device: str = "auto",
                quantization: str | None = None, trust_remote_code: bool = False) -> Scorer:
    """The model in ``files.model_dir``, prompted as it was trained (the run's --chat-template), and its reward
    head, in eval mode on one device."""
    loaded = load_model(str(files.model_dir), task=files.task, runs_dir=runs_root, dtype=dtype,
                        device=str(resolve_device(device)), for_training=False, quantization=quantization,
                        trust_remote_code=trust_remote_code)
    use_chat_template(loaded, files.config.get("chat_template") or "auto")
    model_device = next(loaded.model.parameters()).device
    head = RewardHead.load(files.head, device=model_device).eval()
    width = loaded.model.get_output_embeddings().in_features
    if head.hidden_size != width:
        raise XKDError(f"the reward head in {files.head} reads {head.hidden_size}-wide states but the model in "
                       f"{files.model_dir} has {width}: the two files come from different runs")
    return Scorer(loaded, head, files)


@torch.no_grad()
def score_tokens(scorer: Scorer, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                 gamma: float = 1.0, tau: float = 1.0, batch_size: int = 32) -> list[dict[str, list]]:
    """Per response (``targets[i]`` after ``prompts[i]``), one value per token: ``mu``, ``sigma``, ``q`` and
    ``delta`` (None at the last token), as lists of floats (see the module docstring); and the response's reward
    as AVA reads it, ``reward_last`` (μ at its last token) and ``reward_sum`` (Σ_t μ_t)."""
    loaded = scorer.loaded
    pad, _, start = special_ids(loaded.tokenizer, loaded.model.config)
    device = next(loaded.model.parameters()).device
    found = []
    for at in range(0, len(prompts), batch_size):
        rows = list(targets[at:at + batch_size])
        batch = make_batch(prompts[at:at + batch_size], rows, is_encoder_decoder=loaded.is_encoder_decoder,
                           pad_id=pad, decoder_start_id=start).to(device)
        logits, hidden = forward(loaded.model, batch, hidden=True)  # B x T x V, B x T x H
        # States past a response's end are zeroed, as if it were alone in its batch: with reward position next,
        # its last token then reads a zero vector whatever its neighbours' lengths (training never reads it).
        hidden = hidden * valid_mask(batch.labels)[..., None].to(hidden.dtype)
        mu, log_sigma = scorer.head(hidden)  # B x T each, float32
        (q_values,), idx = term_columns([q_term(tau)], logits, batch.labels, vocab_size=model_vocab_size(loaded),
                                        chunk_size=None)
        q = scatter_positions(q_values, idx, batch.labels.shape)  # B x T, Eq. 28 at the response's tokens
        delta = q[:, :-1] - gamma * q[:, 1:]  # B x (T-1), Eq. 16; read only where a next token exists
        sigma = log_sigma.exp()
        # AVA's reward of a whole response (Eq. 18, 19): μ at its last token, which F_c compares, and Σ_t μ_t
        last, total = (response_reward(mu, batch.labels, how=how).tolist() for how in ("last", "sum"))
        for b, row in enumerate(rows):
            n = len(row)
            found.append({"mu": mu[b, :n].tolist(), "sigma": sigma[b, :n].tolist(), "q": q[b, :n].tolist(),
                          "delta": delta[b, :n - 1].tolist() + [None], "reward_last": last[b],
                          "reward_sum": total[b]})
    return found


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded response (special tokens as they are spelled, e.g. ``</s>``); a
    token that ends inside a character gets "" and the token that completes it the whole character (bytes that
    never make a character, as a random model may sample, are each shown as "\ufffd")."""
    pieces, before, pending = [], "", []
    for k in range(len(ids)):
        text = tokenizer.decode(list(ids[:k + 1]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.startswith(before) and not text.endswith("\ufffd"):
            pieces.append(text[len(before):])
            before, pending = text, []
        else:
            pieces.append("")
            pending.append(k)
    for k in pending:
        pieces[k] = "\ufffd"
    return pieces


def _responses(cfg: RewardViewConfig, files: ScorerFiles) -> tuple[list[Example], dict[str, Any]]:
    """The prompts and references to score: one given pair, or the first examples of the task's split."""
    if cfg.prompt is not None:
        given = Example(id="given", prompt=cfg.prompt, reference=cfg.response or "", source=cfg.prompt)
        return [given], {"task": files.task, "split": None, "keep_end": False}
    spec = cfg.task or files.config.get("task") or files.task
    if not spec:
        raise XKDError(f"run {files.name!r} records no task: pass --task, or --prompt and --response")
    task = get_task(spec)
    split = cfg.split or task.eval_split
    examples = task.load(split, cfg.data or files.config.get("data"), limit=cfg.limit)
    return examples, {"task": task.name, "split": split, "keep_end": task.keep_prompt_end}


def _greedy(scorer: Scorer, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    loaded = scorer.loaded
    pad, eos, _ = special_ids(loaded.tokenizer, loaded.model.config)
    outputs = generate_batched(loaded.model, prompts, Sampling(max_new_tokens=max_new_tokens),
                               is_encoder_decoder=loaded.is_encoder_decoder, pad_id=pad, eos_id=eos,
                               batch_size=batch_size, stop_ids=stop_ids(loaded))
    return [rows[0] or [eos] for rows in outputs]


def _example_record(example: Example, ids: list[int], values: dict[str, list], tokenizer, truncated: bool,
                    special: set[int]) -> dict[str, Any]:
    pieces = token_pieces(tokenizer, ids)
    tokens = [{"position": t, "token": pieces[t], "id": token_id, "special": token_id in special,
               "mu": values["mu"][t], "sigma": values["sigma"][t], "q": values["q"][t], "delta": values["delta"][t]}
              for t, token_id in enumerate(ids)]
    return {"id": example.id, "prompt": example.prompt,
            "response": tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
            "truncated": truncated, "reward_last": values["reward_last"], "reward_sum": values["reward_sum"],
            "tokens": tokens}


def run_reward_view(cfg: RewardViewConfig, files: ScorerFiles, *, runs_root: Path) -> dict[str, Any]:
    """Score the responses ``cfg`` asks for with the run's model and head; write ``reward.json``, ``reward.html``
    and ``reward-<k>.png`` (one per response) into ``cfg.out`` (default ``<run>/reward``); return the result."""
    examples, where = _responses(cfg, files)
    trained = files.config
    max_in = cfg.max_input_len or trained.get("max_input_len") or 512
    max_out = cfg.max_output_len or trained.get("max_output_len") or trained.get("max_new_tokens") or 64
    if cfg.prompt is not None:  # a pair the user typed is scored whole unless the flags say otherwise
        max_in = cfg.max_input_len or WHOLE
        max_out = cfg.max_output_len or (WHOLE if cfg.response is not None else max_out)
    scorer = load_scorer(files, runs_root=runs_root, dtype=cfg.dtype, device=cfg.device,
                         quantization=quantization_of(cfg.load_in_8bit, cfg.load_in_4bit),
                         trust_remote_code=cfg.trust_remote_code)
    tok = scorer.loaded.tokenizer
    prompts = encode_example_prompts(scorer.loaded, examples, max_len=max_in, keep_end=where["keep_end"])
    if cfg.generate:
        targets = _greedy(scorer, prompts, max_out, cfg.batch_size)
        ends = {special_ids(tok, scorer.loaded.model.config)[1], *stop_ids(scorer.loaded)}
        truncated = [ids[-1] not in ends for ids in targets]  # ran out of tokens before it stopped
    else:
        references = [e.reference for e in examples]
        targets = encode_example_targets(scorer.loaded, references, max_len=max_out)
        lengths = [len(ids) for ids in tok(references, add_special_tokens=False)["input_ids"]]
        truncated = [n + 1 > max_out for n in lengths]  # the end token is added after the text
    gamma, tau = (1.0 if trained.get(k) is None else float(trained[k]) for k in ("gamma", "tau"))  # the run's γ, τ′
    values = score_tokens(scorer, prompts, targets, gamma=gamma, tau=tau, batch_size=cfg.batch_size)
    special = set(tok.all_special_ids)
    records = [_example_record(e, list(ids), v, tok, cut, special)
               for e, ids, v, cut in zip(examples, targets, values, truncated)]
    out_dir = Path(cfg.out).expanduser() if cfg.out else files.path / OUTPUT_DIR
    result = {
        "scorer": {**files.describe(), "reward_position": scorer.head.reward_position, "gamma": gamma, "tau": tau},
        "task": where["task"], "split": where["split"],
        "responses": "generated" if cfg.generate else "given" if cfg.prompt is not None else "reference",
        "max_input_len": max_in if max_in < WHOLE else None, "max_output_len": max_out if max_out < WHOLE else None,
        "scale": nice_scale(max((abs(t["mu"]) for r in records for t in r["tokens"]), default=0.0)),
        "examples": records,
    }
    return write_views(result, out_dir)


def write_views(result: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write the page, the figures and ``reward.json`` (the result with the files' paths) into ``out_dir``;
    figures an earlier view left there are removed first, so every PNG belongs to this view."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("reward-*.png"):
        if FIGURE.fullmatch(old.name):
            old.unlink()
    files = {"json": str(out_dir / "reward.json"), "html": str(write_page(result, out_dir / "reward.html")),
             "png": [str(p) for p in write_figures(result, out_dir)]}
    result = {**result, "files": files}
    write_json(out_dir / "reward.json", result)
    return result
