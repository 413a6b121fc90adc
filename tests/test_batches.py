"""The batch layout: padded, batched logits equal those of each example run alone, for both architectures."""

import pytest
import torch

from xkd_cli.data.batches import IGNORE, make_batch
from xkd_cli.models.forward import forward
from xkd_cli.models.zoo import build_tiny_model

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
TARGETS = [[20, 21, 1], [22, 23, 24, 25, 1], [1]]


def target_logprobs(model, batch):
    logits, _ = forward(model, batch)
    logp = torch.log_softmax(logits.float(), -1)
    labels = batch.labels
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return [picked[i][labels[i] != IGNORE] for i in range(len(labels))]


@pytest.mark.parametrize("name", ["tiny-t5-small", "tiny-gpt-small"])
def test_batched_equals_one_by_one(name):
    loaded = build_tiny_model(name)
    model = loaded.model.eval()
    kw = dict(is_encoder_decoder=loaded.is_encoder_decoder, pad_id=0, decoder_start_id=0)
    batch = make_batch(PROMPTS, TARGETS, **kw)
    assert batch.labels.shape == (3, 5)
    assert batch.tokens == sum(len(t) for t in TARGETS)
    with torch.no_grad():
        together = target_logprobs(model, batch)
        for i in range(3):
            alone = target_logprobs(model, make_batch([PROMPTS[i]], [TARGETS[i]], **kw))[0]
            assert len(alone) == len(TARGETS[i])
            torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-5)


def test_decoder_only_targets_follow_the_prompt():
    """Column j of the kept logits predicts target[j]: check against a plain forward of prompt + target."""
    loaded = build_tiny_model("tiny-gpt-small")
    model = loaded.model.eval()
    prompt, target = PROMPTS[0], TARGETS[1]
    with torch.no_grad():
        full = model(torch.tensor([prompt + target])).logits[0]  # (P + T) x V
        expected = torch.log_softmax(full[len(prompt) - 1:len(prompt) - 1 + len(target)], -1)
        expected = expected.gather(-1, torch.tensor(target).unsqueeze(-1)).squeeze(-1)
        got = target_logprobs(model, make_batch([prompt], [target], is_encoder_decoder=False, pad_id=0,
                                                decoder_start_id=0))[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
