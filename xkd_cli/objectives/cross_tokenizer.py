"""Token-level distillation when the teacher's tokenizer differs from the student's (``xkd distill
--cross-tokenizer``; docs/method.md, "Different tokenizers").

The teacher reads the batch's text tokenised its own way (:mod:`.alignment`); its logits rows are gathered
at the student positions they align with, and a per-position term compares two distributions over two
vocabularies.  Unaligned student positions (inside a merged span) get no teacher term but still count: every loss is
normalised per student token, as everywhere else.  F_ex reads only the student's probabilities, so the
X-variants (sxkd, gxkd) compose with these terms unchanged (:func:`kd_experiential_sum`).

* ``uld``: Universal Logit Distillation (Boizard et al., 2024): the closed-form Wasserstein-1 distance
  between the two sorted probability vectors (the shorter padded with zeros),
  Σ_k |sort↓(p_S)_k − sort↓(p_T)_k|.  It ignores which token carries which probability, so as in the
  paper the NLL of the targets anchors the tokens: added on ground-truth batches (on the student's own
  samples it would only reinforce them).
* ``shared``: token identity where it means the same on both sides.  The shared vocabulary pairs the
  tokens that spell the same text (:class:`TokenMap`).  Where both tokenizers put the same piece of text
  next (``AlignedTeacher.matched``), the divergence (``--divergence``) between the two distributions over
  the shared tokens plus one bucket for all the others; elsewhere no teacher term: where the teacher's next
  token is " could" and the student's " cou", the teacher's mass on " could" is no evidence against the
  student's " cou" (compared token by token there, it pushed the student off its own segmentation and
  collapsed it; ULD there lowered GKD by 6 ROUGE-2 points and changed SKD by none).  On
  ground-truth batches, as for ``uld``, the NLL of the target is added wherever no matched partner says
  which token comes next.  With identical tokenizers every position is matched, the shared vocabulary is
  the whole vocabulary, and the term *is* the ordinary divergence, bit for bit.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from xkd_cli.core.timing import PHASES
from xkd_cli.data.batches import IGNORE, Batch
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.models.tokenizers import tokenizers_match
from xkd_cli.objectives.alignment import AlignedTeacher, Retokenizer, TokenMap
from xkd_cli.objectives.divergences import DIVERGENCES, DivergenceParams, bucket_logprobs, logprob_buckets
from xkd_cli.objectives.chunked import KDTerm
from xkd_cli.objectives.experiential import ExperientialParams
from xkd_cli.objectives.steps import KDObjective, teacher_logits

CROSS_TOKENIZER_METHODS = ("uld", "shared")


def uld_distance(p_s: Tensor, p_t: Tensor) -> Tensor:
    """Σ_k |sort↓(p_s)_k − sort↓(p_t)_k| per row, ``N x V_s`` and ``N x V_t`` probabilities, the shorter
    row padded with zeros (the padding meets the other side's smallest entries: their plain sum)."""
    k = min(p_s.shape[-1], p_t.shape[-1])
    s = p_s.sort(-1, descending=True).values
    t = p_t.sort(-1, descending=True).values
    return (s[:, :k] - t[:, :k]).abs().sum(-1) + s[:, k:].sum(-1) + t[:, k:].sum(-1)


def uld_term(aligned_teacher: Tensor, aligned: Tensor, *, teacher_vocab: int, with_nll: bool) -> KDTerm:
    """ULD at the aligned positions (0 elsewhere), plus −log p_S(y_t) at every position when ``with_nll``.
    ``aligned_teacher`` is ``B x T x V_t`` (the teacher's rows at the student's positions), ``aligned``
    ``B x T`` bool."""

    def row_fn(rows: Sequence[Tensor], targets: Tensor) -> Tensor:
        s, t, mask = rows  # N x V_s float32, N x V_t, N x 1
        distance = uld_distance(s.softmax(-1), t[:, :teacher_vocab].float().softmax(-1)) * mask[:, 0]
        if with_nll:
            distance = distance - s.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        return distance  # N

    return KDTerm(row_fn, extras=(aligned_teacher.detach(), aligned[..., None].float()), uses_targets=with_nll)


def shared_vocab_term(name: str, aligned_teacher: Tensor, matched: Tensor, token_map: TokenMap, *,
                      teacher_vocab: int, beta: float, with_nll: bool = False) -> KDTerm:
    """Where both predict the same piece next (``matched``): D_name between the two distributions over the
    shared tokens plus one bucket for all the others; with ``with_nll``, −log p_S(y_t) at every other
    position (module docstring)."""
    fn = DIVERGENCES.get(name)
    s_ids, t_ids = token_map.student_ids, token_map.teacher_ids
    with_nll = with_nll and not token_map.identity

    def row_fn(rows: Sequence[Tensor], targets: Tensor) -> Tensor:
        s, t, same = rows
        t = t[:, :teacher_vocab].float()
        if token_map.identity:  # the ordinary divergence on the same rows: equal bit for bit
            return fn(s, t, beta) * same[:, 0]  # x·1.0 is x exactly: equal to the plain divergence bit for bit
        s_logp = s.log_softmax(-1)  # once, for the buckets and the NLL
        value = fn(logprob_buckets(s_logp, s_ids.to(s.device).expand(len(s), -1)),
                   bucket_logprobs(t, t_ids.to(t.device).expand(len(t), -1)), beta) * same[:, 0]
        if with_nll:
            value = value - s_logp.gather(-1, targets[:, None]).squeeze(-1) * (1 - same[:, 0])
        return value

    return KDTerm(row_fn, extras=(aligned_teacher.detach(), matched[..., None].float()), uses_targets=with_nll)


class CrossTokenizerObjective(KDObjective):
    """skd, sxkd, gkd, gxkd with a teacher of another tokenizer: the teacher runs on its own tokenisation
    of the batch's text and the term compares the aligned positions (``method``: uld or shared)."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel, *, vocab_size: int,
                 divergence: DivergenceParams | None, experiential: ExperientialParams | None, method: str,
                 teacher_vocab: int, prompt_text: Callable[[str], str | None],
                 prompt_ids: Callable[[Batch], Sequence[Sequence[int]]], max_input_len: int, keep_end: bool,
                 same_layout: bool, fused_head: str = "on"):
        """``divergence``: the one ``shared`` compares the shared vocabulary with (None for ``uld``)."""
        super().__init__(student, teacher, vocab_size=vocab_size, divergence=divergence, experiential=experiential,
                         fused_head=fused_head)  # the student's head only: the teacher's logits are gathered
        self.method, self.teacher_vocab, self.same_layout = method, teacher_vocab, same_layout
        self.prompt_ids = prompt_ids
        self.retokenize = Retokenizer(student, teacher, prompt_text=prompt_text, max_input_len=max_input_len,
                                      keep_end=keep_end)
        self.token_map = None
        # this step's student tokens with a teacher partner, those whose partner predicts the same piece, all
        self._aligned, self._matched, self._counted = 0, 0, 0
        if method == "shared":
            self.token_map = TokenMap.same(vocab_size) if vocab_size == teacher_vocab and tokenizers_match(
                teacher.tokenizer, student.tokenizer) else TokenMap.build(
                student.tokenizer, teacher.tokenizer, student_vocab=vocab_size, teacher_vocab=teacher_vocab)

    def teacher_view_aligned(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """The teacher's logits at the student's positions (``B x T x V_t``), which positions align, and at
        which of those both predict the same piece next.
        With the same tokenizer and layout the batch needs no re-tokenisation: every position is its own partner
        (re-encoding a sample the student tokenised unusually would change it)."""
        if self.same_layout:
            logits = self.teacher_logits(batch)
            everywhere = torch.ones_like(batch.labels, dtype=torch.bool)
            return logits, everywhere, everywhere
        view: AlignedTeacher = self.retokenize(batch, self.prompt_ids(batch))
        self.teacher_forwards += 1
        logits = view.gather(teacher_logits(self.teacher, view.batch, batch.labels.device))
        counted = (batch.labels != IGNORE).cpu()
        self._aligned += int(view.aligned[counted].sum())
        self._matched += int(view.matched[counted].sum())
        self._counted += int(counted.sum())
        return logits, view.aligned.to(batch.labels.device), view.matched.to(batch.labels.device)

    def step_metrics(self) -> dict[str, float]:
        """KDObjective's, plus the share of the step's student tokens that had a teacher partner (the rest:
        merged spans, positions inside a character) and, for ``shared``, whose partner predicted the same
        piece (only those get its teacher term)."""
        metrics = super().step_metrics()
        if self._counted:
            metrics["aligned_fraction"] = round(self._aligned / self._counted, 4)
            if self.method == "shared":
                metrics["matched_fraction"] = round(self._matched / self._counted, 4)
        self._aligned, self._matched, self._counted = 0, 0, 0
        return metrics

    def kd_term(self, batch: Batch) -> KDTerm:
        with PHASES("teacher_forward"):
            teacher, aligned, matched = self.teacher_view_aligned(batch)
        if self.method == "uld":
            return uld_term(teacher, aligned, teacher_vocab=self.teacher_vocab, with_nll=batch.off_policy)
        return shared_vocab_term(self.divergence.name, teacher, matched, self.token_map,
                                 teacher_vocab=self.teacher_vocab, beta=self.divergence.beta, with_nll=batch.off_policy)
