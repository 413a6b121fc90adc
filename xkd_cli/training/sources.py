"""Where a training step's batches come from: a task split tokenised once (:class:`EncodedSet`), the seeded
order its examples are drawn in (:class:`IndexStream`, :class:`ShardedStream`), and the data sources a
method names in its table entry (``xkd_cli.config.methods``):

| source            | batches                                                        | methods          |
|-------------------|----------------------------------------------------------------|------------------|
| ``Targets``       | the data set's targets (ground truth, or the teacher's samples; | sft, seqkd, skd, |
|                   | over an :class:`EncodedPairSet`, both sides of preference pairs) | reward-model     |
| ``AlphaMix``      | with probability α the student's own samples, else the targets  | gkd, gxkd        |
| ``TeacherMixed``  | student samples drawn from MiniLLM's teacher-mixed distribution  | minillm          |

Every source has the same interface (:class:`Source`): ``draw(stream)`` a micro-batch, ``state_dict()`` /
``load_state_dict()`` for checkpoints, and ``step_metrics()`` for the step log.
"""

from __future__ import annotations

import inspect
import random
import time
from typing import Any, Protocol, Sequence

import torch

from xkd_cli.core.errors import XKDError
from xkd_cli.core.timing import PHASES
from xkd_cli.data.batches import Batch, make_batch, make_pair_batch, pad_rows, special_ids
from xkd_cli.data.tasks import Example, PreferencePair
from xkd_cli.models.chat import encode_example_pairs, encode_example_prompts, encode_example_targets, stop_ids
from xkd_cli.models.generate import Sampling, generate_ids
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.objectives.minillm import teacher_mixed_logprobs
from xkd_cli.training.distributed import Processes


class EncodedSet:
    """A task split tokenised once: prompt and target ids per example, ready for ``make_batch``."""

    def __init__(self, examples: Sequence[Example], loaded: LoadedModel, *, max_input_len: int, max_output_len: int,
                 keep_end: bool = False):
        tok = loaded.tokenizer
        self.examples = list(examples)
        self.is_encoder_decoder = loaded.is_encoder_decoder
        self.pad_id, self.eos_id, self.start_id = special_ids(tok, loaded.model.config)
        self.stop_ids = stop_ids(loaded)
        if loaded.chat is not None:  # targets (and empty samples) end with the template's end-of-turn token
            self.eos_id = loaded.chat.end_of_turn
        self.prompts = encode_example_prompts(loaded, self.examples, max_len=max_input_len, keep_end=keep_end)
        self.targets = encode_example_targets(loaded, [e.reference for e in self.examples], max_len=max_output_len)

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: Sequence[int], targets: Sequence[Sequence[int]] | None = None) -> Batch:
        return make_batch([self.prompts[i] for i in indices],
                          targets if targets is not None else [self.targets[i] for i in indices],
                          is_encoder_decoder=self.is_encoder_decoder, pad_id=self.pad_id,
                          decoder_start_id=self.start_id, ids=[self.examples[i].id for i in indices])


class EncodedPairSet:
    """Preference pairs tokenised once. ``batch(indices)`` gives B pairs as 2B rows, the chosen responses first and
    then the rejected ones in the same order (:func:`~xkd_cli.data.batches.make_pair_batch`, the layout
    ``ava_p_sum`` and ``bradley_terry_sum`` read), so :class:`Targets` draws pairs from it as it draws examples from
    an :class:`EncodedSet`; the stream counts pairs."""

    def __init__(self, pairs: Sequence[PreferencePair], loaded: LoadedModel, *, max_input_len: int,
                 max_output_len: int, keep_end: bool = False):
        self.pairs = list(pairs)
        self.is_encoder_decoder = loaded.is_encoder_decoder
        self.pad_id, _, self.start_id = special_ids(loaded.tokenizer, loaded.model.config)
        self.encoded = encode_example_pairs(loaded, self.pairs, max_input_len=max_input_len,
                                            max_output_len=max_output_len, keep_end=keep_end)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> Batch:
        e = self.encoded
        return make_pair_batch([e.prompts[i] for i in indices], [e.chosen[i] for i in indices],
                               [e.rejected[i] for i in indices], is_encoder_decoder=self.is_encoder_decoder,
                               pad_id=self.pad_id, decoder_start_id=self.start_id,
                               ids=[self.pairs[i].id for i in indices])


class IndexStream:
    """Example indices in a fresh seeded shuffle each epoch; a micro-batch takes the next ``size`` indices,
    so ``batch 8`` and ``batch 4 × accum 2`` see the same examples in the same order."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise XKDError("the training set is empty. Check --data / --train-fraction.")
        self.n, self.seed = n, seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def take(self, size: int) -> list[int]:
        out = []
        while len(out) < size:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle()
            step = min(size - len(out), self.n - self.position)
            out.extend(self._order[self.position:self.position + step])
            self.position += step
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffle()


class ShardedStream:
    """This process's share of a shared index stream: every process takes the same ``size × count``
    indices and keeps slice ``rank``; the wrapped stream's state is therefore the same on all processes, and
    checkpoints save that stream itself."""

    def __init__(self, stream: IndexStream, processes: Processes):
        self.stream, self.processes = stream, processes

    def take(self, size: int) -> list[int]:
        indices = self.stream.take(size * self.processes.count)
        return indices[self.processes.rank * size:(self.processes.rank + 1) * size]


class Source(Protocol):
    def draw(self, stream: IndexStream | ShardedStream) -> Batch:
        """The next micro-batch, its examples taken from ``stream``."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep for a resumed run to draw the same batches (and report the same counts)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def step_metrics(self) -> dict[str, Any]:
        """Numbers for the step log (read once per optimizer step)."""


class Targets:
    """The data set's own targets: ground truth, or the teacher's samples (an EncodedSet of gen-teacher rows).
    They never change, so the teacher cache may serve them (``off_policy``)."""

    def __init__(self, data: EncodedSet, batch_size: int):
        self.data, self.batch_size = data, batch_size

    def draw(self, stream: IndexStream | ShardedStream) -> Batch:
        batch = self.data.batch(stream.take(self.batch_size))
        batch.off_policy = True
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def step_metrics(self) -> dict[str, Any]:
        return {}


class StudentSampler:
    """Fresh samples from the current student for a batch's prompts (KV-cached ``generate``); the time it
    takes is kept apart from training time."""

    def __init__(self, student: LoadedModel, data: EncodedSet, sampling: Sampling, vocab_size: int):
        self.student, self.data, self.sampling, self.vocab_size = student, data, sampling, vocab_size
        self.seconds = 0.0
        self.sequences = 0

    def __call__(self, indices: Sequence[int], *, processor=None) -> list[list[int]]:
        started = time.perf_counter()
        with PHASES("generate"):
            rows = generate_ids(self.student.model, [self.data.prompts[i] for i in indices], self.sampling,
                                is_encoder_decoder=self.data.is_encoder_decoder, pad_id=self.data.pad_id,
                                eos_id=self.data.eos_id, vocab_size=self.vocab_size, logits_processor=processor,
                                stop_ids=self.data.stop_ids)
        self.seconds += time.perf_counter() - started
        self.sequences += len(indices)
        # An empty continuation still needs one target (eos) so the row counts as a sequence.
        return [r[0] if r[0] else [self.data.eos_id] for r in rows]

    # Checkpoints keep the counters (the samples themselves come from torch's RNG, which they keep too).
    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "sequences": self.sequences}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds, self.sequences = state["seconds"], state["sequences"]

    def step_metrics(self) -> dict[str, Any]:
        return {"generation_s": round(self.seconds, 3), "student_samples": self.sequences}


class AlphaMix:
    """Algorithm 1's data: with probability α the student's own samples, otherwise the data set's targets.
    The coin has its own seeded generator, so α = 0 never samples and draws no model randomness."""

    def __init__(self, targets: Targets, sampler: StudentSampler, alpha: float, seed: int):
        self.targets, self.sampler, self.alpha = targets, sampler, alpha
        self.coin = random.Random(seed)
        self.on_policy_batches = 0

    def draw(self, stream: IndexStream | ShardedStream) -> Batch:
        if self.alpha > 0 and self.coin.random() < self.alpha:
            indices = stream.take(self.targets.batch_size)
            self.on_policy_batches += 1
            return self.targets.data.batch(indices, targets=self.sampler(indices))
        return self.targets.draw(stream)

    def state_dict(self) -> dict[str, Any]:
        """The coin's exact position: a resumed run flips the same coins."""
        version, internal, gauss = self.coin.getstate()
        return {"coin": [version, list(internal), gauss], "on_policy_batches": self.on_policy_batches,
                "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["coin"]
        self.coin.setstate((version, tuple(internal), gauss))
        self.on_policy_batches = state["on_policy_batches"]
        self.sampler.load_state_dict(state["sampler"])

    def step_metrics(self) -> dict[str, Any]:
        return self.sampler.step_metrics()


class TeacherMixer:
    """A ``generate`` logits processor that turns the student's next-token scores into MiniLLM's
    teacher-mixed distribution log((1 − mix)·p_S + mix·p_T). The teacher keeps a KV cache of its own,
    so each step feeds it only the tokens it has not seen (generate never reorders rows here: no beams)."""

    def __init__(self, teacher: LoadedModel, prompts: list[list[int]], data: EncodedSet, mix: float,
                 temperature: float, vocab_size: int):
        self.teacher, self.mix, self.temperature, self.vocab_size = teacher, mix, temperature, vocab_size
        self.is_encoder_decoder = data.is_encoder_decoder
        device = next(teacher.model.parameters()).device
        left = not data.is_encoder_decoder
        self.input_ids = pad_rows(prompts, data.pad_id, left=left).to(device)
        self.mask = pad_rows([[1] * len(p) for p in prompts], 0, left=left).to(device)
        self.encoder_outputs = None
        self.past = None
        self.seen = 0  # tokens of generate's ``input_ids`` already in the teacher's cache
        base = teacher.model.get_base_model() if hasattr(teacher.model, "get_base_model") else teacher.model
        # transformers 5.2x renamed forward's past_key_values to cache (the old name warns); older ones lack it
        self.cache_key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def teacher_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The teacher's next-token logits after ``input_ids`` (B x V), reading only the new tokens."""
        model = self.teacher.model
        device = self.input_ids.device
        new = input_ids[:, self.seen:].to(device)
        if self.is_encoder_decoder:
            if self.encoder_outputs is None:
                self.encoder_outputs = model.get_encoder()(input_ids=self.input_ids, attention_mask=self.mask)
            out = model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask, decoder_input_ids=new,
                        use_cache=True, **{self.cache_key: self.past})
        else:
            generated = input_ids.shape[1] - self.input_ids.shape[1]
            mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], generated))], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, self.seen:]
            out = model(input_ids=new, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                        **{self.cache_key: self.past})
        self.past, self.seen = out[self.cache_key] if self.cache_key in out else out.past_key_values, input_ids.shape[1]
        return out.logits[:, -1]

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher_logits(input_ids)[:, : self.vocab_size].float().to(scores.device) / self.temperature
        student = scores[:, : self.vocab_size].float() / self.temperature
        mixed = teacher_mixed_logprobs(student, teacher, mix=self.mix)
        full = torch.full_like(scores, float("-inf"), dtype=torch.float32)
        full[:, : self.vocab_size] = mixed
        return full


class TeacherMixed:
    """MiniLLM's data: for each batch's prompts, student samples drawn from the teacher-mixed distribution
    (:class:`TeacherMixer`, weight ``mix``). Each batch of rollouts serves ``ppo_epochs`` optimizer steps in a
    row (MiniLLM's ``--ppo-epochs``): the first step samples ``per_step`` fresh micro-batches (one step's
    worth), the next ``ppo_epochs − 1`` steps replay them in the same order, so the student they update has
    moved away from the one that sampled them. A rollout carries its prompts' ground-truth targets
    (``reference``, for the language-modelling term) and a ``memo`` in which the objective keeps what it
    computed on the first pass (the sampling policy's log-probabilities, the advantages)."""

    def __init__(self, sampler: StudentSampler, teacher: LoadedModel, batch_size: int, mix: float, *,
                 ppo_epochs: int = 1, per_step: int = 1):
        self.sampler, self.teacher, self.batch_size, self.mix = sampler, teacher, batch_size, mix
        self.ppo_epochs, self.per_step = ppo_epochs, per_step
        self.round: list[tuple[list[int], list[list[int]], Batch]] = []  # this round's rollouts, sampled so far
        self.drawn = 0  # micro-batches handed out in this round
        self.rounds = 0

    def _batch(self, indices: list[int], targets: list[list[int]], memo: dict) -> Batch:
        data = self.sampler.data
        batch = data.batch(indices, targets=targets)
        batch.reference, batch.memo = data.batch(indices), memo
        batch.reference.off_policy = True
        return batch

    def draw(self, stream: IndexStream | ShardedStream) -> Batch:
        if self.drawn == self.per_step * self.ppo_epochs:
            self.round, self.drawn = [], 0
        if self.drawn < self.per_step:  # the round's first step: fresh rollouts
            data = self.sampler.data
            indices = stream.take(self.batch_size)
            mixer = TeacherMixer(self.teacher, [data.prompts[i] for i in indices], data, self.mix,
                                 self.sampler.sampling.temperature, self.sampler.vocab_size)
            targets = self.sampler(indices, processor=mixer)
            self.round.append((indices, targets, self._batch(indices, targets, {})))
            if self.drawn == 0:
                self.rounds += 1
        batch = self.round[self.drawn % self.per_step][2]
        self.drawn += 1
        return batch

    def ppo_epoch(self) -> int:
        """Which policy update of its rollouts the last step made (1 for fresh ones)."""
        return max(1, -(-self.drawn // self.per_step))

    def state_dict(self) -> dict[str, Any]:
        """The round in progress, rollouts and memos included: a run resumed inside a round replays the same
        samples against the same sampling-time log-probabilities."""
        round_ = [{"indices": i, "targets": t, "memo": {k: v.tolist() for k, v in (b.memo or {}).items()}}
                  for i, t, b in self.round]
        return {"sampler": self.sampler.state_dict(), "drawn": self.drawn, "rounds": self.rounds, "round": round_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.drawn, self.rounds = state.get("drawn", 0), state.get("rounds", 0)
        self.round = [(r["indices"], r["targets"],
                       self._batch(r["indices"], r["targets"], {k: torch.tensor(v) for k, v in r["memo"].items()}))
                      for r in state.get("round", [])]
        if len(self.round) < min(self.drawn, self.per_step):  # an older checkpoint: start a fresh round
            self.round, self.drawn = [], 0

    def step_metrics(self) -> dict[str, Any]:
        return {**self.sampler.step_metrics(), "ppo_epoch": self.ppo_epoch(), "rollout_batches": self.rounds}
