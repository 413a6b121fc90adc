"""MiniLLM's options on hand-built batches with the tiny models: several policy updates per batch of rollouts
(the ratio leaves 1 and the clip engages), the language-modelling term (the targets' NLL times its weight),
whitening, the source that replays rollouts (and resumes inside a round), and the collapse signals the step
log reports."""

import pytest
import torch

from xkd_cli.data.taskfile import get_task
from xkd_cli.models.forward import forward
from xkd_cli.models.generate import Sampling
from xkd_cli.models.zoo import build_tiny_model
from xkd_cli.objectives.chunked import nll_sum, token_logprobs, valid_mask
from xkd_cli.objectives.minillm import (MiniLLMParams, masked_whiten, minillm_advantages, minillm_rewards,
                                        ppo_clip_sum)
from xkd_cli.objectives.steps import MiniLLMObjective, teacher_logits
from xkd_cli.training.sources import EncodedSet, IndexStream, StudentSampler, TeacherMixed

VOCAB = 2048


@pytest.fixture(scope="module")
def pair():
    """A tiny T5 student and teacher and four synth-mt examples, tokenised."""
    student, teacher = build_tiny_model("tiny-t5-small"), build_tiny_model("tiny-t5-base")
    data = EncodedSet(get_task("synth-mt").load("train", limit=4), student, max_input_len=32, max_output_len=8)
    return student, teacher, data


def rollout(data, targets=None):
    """A hand-built rollout batch: the given targets (default: the ground truth) as the 'samples', the ground
    truth as the reference, an empty memo."""
    batch = data.batch([0, 1, 2, 3], targets=targets)
    batch.reference, batch.memo = data.batch([0, 1, 2, 3]), {}
    return batch


def fresh(student):
    """An independent copy of the student (the module's fixture stays untouched)."""
    copy = build_tiny_model("tiny-t5-small")
    copy.model.load_state_dict(student.model.state_dict())
    return copy


def test_later_ppo_epochs_reuse_the_sampling_policy_so_the_ratio_moves_and_the_clip_engages(pair):
    student, teacher, data = pair
    student = fresh(student)
    objective = MiniLLMObjective(student, teacher, vocab_size=VOCAB, params=MiniLLMParams(lm_weight=0.0))
    batch = rollout(data)
    terms = objective.terms(batch)
    first = objective.step_metrics()
    assert set(terms) == {"pg", "rkl"}  # lm_weight 0: no language-modelling term
    assert first["minillm_ratio_mean"] == 1.0 and first["minillm_ratio_std"] == 0.0  # fresh rollouts: ratio 1
    old = batch.memo["old"].clone()
    # one large update on the policy gradient: the student moves away from the one that sampled the batch
    optimizer = torch.optim.SGD(student.model.parameters(), lr=50.0)
    terms["pg"][0].backward()
    optimizer.step()
    optimizer.zero_grad()
    terms = objective.terms(batch)  # the second PPO epoch on the same rollouts
    second = objective.step_metrics()
    assert torch.equal(batch.memo["old"], old)  # p_old is still the sampling policy
    assert second["minillm_ratio_std"] > 0.01 and second["minillm_clipped"] > 0
    # the term and the clipped share, by hand from the memo and the current student
    logits, _ = forward(student.model, batch)
    logp = token_logprobs(logits, batch.labels, vocab_size=VOCAB)
    m = batch.memo
    want = ppo_clip_sum(logp, m["old"], m["advantages"], batch.labels, weights=m["weights"], clip=0.2)
    torch.testing.assert_close(terms["pg"][0], want.total)
    ratio = (logp - m["old"]).exp() * m["weights"]
    adv = m["advantages"]
    held = (((adv > 0) & (ratio > 1.2)) | ((adv < 0) & (ratio < 0.8))) & valid_mask(batch.labels)
    assert second["minillm_clipped"] == pytest.approx(held.sum().item() / valid_mask(batch.labels).sum().item())


def test_the_lm_term_is_the_nll_of_the_ground_truth_targets_times_its_weight(pair):
    student, teacher, data = pair
    samples = [[5, 9, 13, 1], [6, 1], [7, 7, 7, 7, 7, 1], [8, 1]]
    batch = rollout(data, samples)
    objective = MiniLLMObjective(student, teacher, vocab_size=VOCAB, params=MiniLLMParams(lm_weight=0.3))
    counts = objective.counts(batch)
    assert counts == {"tokens": 4 + 2 + 6 + 2, "lm_tokens": batch.reference.tokens}
    lm, normaliser = objective.terms(batch)["lm"]
    logits, _ = forward(student.model, batch.reference)
    assert normaliser == "lm_tokens"
    torch.testing.assert_close(lm, 0.3 * nll_sum(logits, batch.reference.labels).total)
    # the reference is the ground truth, not the samples: their NLL differs
    sampled_nll = nll_sum(forward(student.model, batch)[0], batch.labels).total
    assert abs(lm / 0.3 - sampled_nll) > 1.0
    metrics = objective.step_metrics()
    assert metrics["sample_length"] == pytest.approx(14 / 4)
    # distinct-token shares 4/4, 2/2, 2/6, 2/2: one token repeated pulls the mean down
    assert metrics["sample_distinct"] == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)


@pytest.mark.parametrize("whiten", [True, False])
def test_whitening_switches_the_advantages_the_objective_keeps(pair, whiten):
    student, teacher, data = pair
    batch = rollout(data)
    objective = MiniLLMObjective(student, teacher, vocab_size=VOCAB,
                                 params=MiniLLMParams(lm_weight=0.0, whiten=whiten))
    objective.terms(batch)
    with torch.no_grad():
        logp = token_logprobs(forward(student.model, batch)[0], batch.labels, vocab_size=VOCAB)
        teacher_logp = token_logprobs(teacher_logits(teacher, batch, torch.device("cpu")), batch.labels,
                                      vocab_size=VOCAB)
    plain = minillm_advantages(minillm_rewards(teacher_logp, logp, batch.labels), batch.labels, discount=0.95)
    want = masked_whiten(plain, batch.labels) if whiten else plain
    torch.testing.assert_close(batch.memo["advantages"], want)
    valid = batch.memo["advantages"][valid_mask(batch.labels)]
    assert (valid.mean().abs().item() < 1e-5) == whiten


def test_teacher_mixed_replays_each_round_for_ppo_epochs_and_resumes_inside_a_round(pair):
    student, teacher, data = pair
    torch.manual_seed(0)
    sampler = StudentSampler(student, data, Sampling(max_new_tokens=6), VOCAB)
    source = TeacherMixed(sampler, teacher, 2, 0.2, ppo_epochs=3, per_step=2)
    stream = IndexStream(len(data), seed=1)
    drawn = [source.draw(stream) for _ in range(4)]  # step 1 (fresh, fresh), step 2 (replay, replay)
    assert drawn[2] is drawn[0] and drawn[3] is drawn[1] and drawn[0] is not drawn[1]
    assert source.step_metrics()["ppo_epoch"] == 2 and sampler.sequences == 4
    ids = [e.id for e in data.examples]
    first = [ids.index(i) for i in drawn[0].ids]
    assert torch.equal(drawn[0].reference.labels, data.batch(first).labels)  # its prompts' ground truth
    drawn[0].memo["old"] = torch.tensor([[-0.5, -1.25]])  # what the objective keeps on a first pass
    state = source.state_dict()
    # a resumed source replays the same rollouts with the same memo
    resumed = TeacherMixed(StudentSampler(student, data, Sampling(max_new_tokens=6), VOCAB), teacher, 2, 0.2,
                           ppo_epochs=3, per_step=2)
    resumed.load_state_dict(state)
    for original in drawn[:2]:
        for source_ in (source, resumed):
            again = source_.draw(stream)
            assert again.ids == original.ids and torch.equal(again.labels, original.labels)
    assert torch.equal(resumed.round[0][2].memo["old"], drawn[0].memo["old"])
    position = stream.state_dict()
    following = source.draw(stream)  # a new round: fresh samples of the next prompts
    assert following is not drawn[0] and sampler.sequences == 6 and stream.state_dict() != position
    assert source.step_metrics()["rollout_batches"] == 2
