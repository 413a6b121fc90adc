"""Tests for xkd_cli.models.loading: builtin tiny models, reference resolution, loading, saving, tokenizers.

Nothing here touches the network: hub ids are only resolved, and the one hub load runs in offline mode.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast

from xkd_cli.models import loading as models
from xkd_cli.core.errors import XKDError
from xkd_cli.models.loaded_model import LoadedModel, count_parameters, model_vocab_size
from xkd_cli.models.loading import load_model, save_model
from xkd_cli.models.references import HUB_ALIASES, resolve_model
from xkd_cli.models.tokenizers import check_same_tokenizer, load_tokenizer
from xkd_cli.models.zoo import BUILTIN_MODELS, build_tiny_model, builtin_tokenizer

EXPECTED_PARAMS = {  # (low, high): "~1M", "~3M", "~8M"
    "tiny-t5-small": (0.8e6, 1.5e6),
    "tiny-t5-base": (2.5e6, 4.0e6),
    "tiny-t5-large": (6.5e6, 10e6),
    "tiny-gpt-small": (0.8e6, 1.5e6),
    "tiny-gpt-large": (6.5e6, 10e6),
    "tiny-gpt-uni": (0.8e6, 1.5e6),
}
PROMPTS = ["Translate to German: the quick brown fox jumps over the lazy dog.", "Hi!"]


@pytest.fixture(scope="module")
def tiny() -> dict[str, LoadedModel]:
    return {name: build_tiny_model(name) for name in EXPECTED_PARAMS}


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _logits(loaded_model, tok, is_enc_dec: bool) -> torch.Tensor:
    tok.padding_side = "right" if is_enc_dec else "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        if is_enc_dec:
            dec = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
            return loaded_model(**enc, decoder_input_ids=dec).logits
        return loaded_model(**enc).logits


# --------------------------------------------------------------------------------------------- builtins


def test_builtin_names():
    # the chat models are the gpt ones with ChatML tokens (tests/test_chat.py)
    assert BUILTIN_MODELS.names() == list(EXPECTED_PARAMS) + ["tiny-chat-small", "tiny-chat-large"]


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_builtin_builds_with_expected_size(tiny, name):
    loaded = tiny[name]
    low, high = EXPECTED_PARAMS[name]
    assert low <= count_parameters(loaded.model) <= high
    assert loaded.source == "builtin" and loaded.location == name and loaded.name == name
    assert loaded.is_encoder_decoder == name.startswith("tiny-t5")
    assert loaded.model.config.is_encoder_decoder == loaded.is_encoder_decoder
    assert model_vocab_size(loaded) == len(loaded.tokenizer) == loaded.model.config.vocab_size
    cfg = loaded.model.config
    # tiny-gpt-uni's Unigram tokenizer numbers its special tokens as SentencePiece models often do
    assert (cfg.pad_token_id, cfg.eos_token_id) == ((1, 2) if name == "tiny-gpt-uni" else (0, 1))
    if loaded.is_encoder_decoder:
        assert cfg.decoder_start_token_id == 0


def test_count_parameters_counts_tied_embeddings_once(tiny):
    model = tiny["tiny-gpt-small"].model
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    unique = {p.data_ptr(): p.numel() for p in model.state_dict().values()}
    assert count_parameters(model) == sum(unique.values())
    emb = model.get_input_embeddings().weight.numel()
    assert count_parameters(model) < sum(p.numel() for p in model.state_dict().values())  # lm_head is a tie
    assert emb == len(builtin_tokenizer()) * model.config.hidden_size


@pytest.mark.parametrize("name", ["tiny-t5-small", "tiny-gpt-small"])
def test_builtin_is_deterministic_and_leaves_global_rng_alone(name):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    first = build_tiny_model(name)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = build_tiny_model(name)
    assert torch.equal(torch.rand(4), expected)  # the caller's stream continues as if nothing happened
    assert _state_equal(first.model, second.model)


@pytest.mark.parametrize("name", ["tiny-t5-small", "tiny-gpt-small"])
def test_forward_pass_and_gradients(tiny, name):
    loaded = tiny[name]
    tok = builtin_tokenizer()
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    model = loaded.model
    model.train()
    try:
        out = model(**enc, labels=labels)
        assert out.logits.shape[-1] == model.config.vocab_size
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert model.get_input_embeddings().weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def _generate(model, enc, n: int):
    return model.generate(
        **enc,
        max_new_tokens=n,
        min_new_tokens=n,  # keep </s> from ending one row early so every step is comparable
        do_sample=False,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
    )


@pytest.mark.parametrize("name", ["tiny-gpt-small", "tiny-gpt-large", "tiny-t5-small"])
def test_batched_padded_generation_matches_single_prompts(tiny, name):
    """Batched KV-cached generation with padding (left for decoder-only, right for the T5 encoder)
    must give each row the same per-step logits as generating that prompt alone, unpadded."""
    loaded = tiny[name]
    tok = builtin_tokenizer()
    tok.padding_side = "right" if loaded.is_encoder_decoder else "left"
    n = 6
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any(), "the prompts must need padding for this test to mean anything"
    batched = _generate(loaded.model, enc, n)
    assert len(batched.logits) == n
    for row, prompt in enumerate(PROMPTS):
        single = _generate(loaded.model, tok([prompt], return_tensors="pt"), n)
        for step in range(n):
            torch.testing.assert_close(batched.logits[step][row], single.logits[step][0], atol=1e-4, rtol=1e-4)
        prompt_len = 0 if loaded.is_encoder_decoder else enc.input_ids.shape[1]
        assert batched.sequences[row, prompt_len:].tolist()[-n:] == single.sequences[0].tolist()[-n:]


# --------------------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name", ["tiny-t5-small", "tiny-gpt-small"])
def test_save_loads_with_plain_transformers(tiny, tmp_path, name):
    loaded = tiny[name]
    target = save_model(loaded, tmp_path / "saved")
    files = set(os.listdir(target))
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(f.endswith(".bin") for f in files)
    assert os.listdir(tmp_path) == ["saved"]  # no temporary siblings left behind

    auto_cls = AutoModelForSeq2SeqLM if loaded.is_encoder_decoder else AutoModelForCausalLM
    plain = auto_cls.from_pretrained(target)
    plain_tok = AutoTokenizer.from_pretrained(target)
    assert plain_tok.get_vocab() == loaded.tokenizer.get_vocab()
    assert (plain_tok.pad_token_id, plain_tok.eos_token_id) == (0, 1)
    torch.testing.assert_close(
        _logits(plain, plain_tok, loaded.is_encoder_decoder),
        _logits(loaded.model, builtin_tokenizer(), loaded.is_encoder_decoder),
        atol=0,
        rtol=0,
    )


def test_save_replaces_existing_directory(tiny, tmp_path):
    target = tmp_path / "model"
    save_model(tiny["tiny-gpt-small"], target)
    (target / "stale.txt").write_text("left over from an older save")
    save_model((tiny["tiny-t5-small"].model, tiny["tiny-t5-small"].tokenizer), target)
    assert not (target / "stale.txt").exists()
    assert json.loads((target / "config.json").read_text())["model_type"] == "t5"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_failed_save_keeps_previous_model(tiny, tmp_path, monkeypatch):
    target = tmp_path / "model"
    save_model(tiny["tiny-gpt-small"], target)
    before = (target / "model.safetensors").read_bytes()

    class Boom(RuntimeError):
        pass

    def broken_save(*args, **kwargs):
        raise Boom("disk full")

    broken = build_tiny_model("tiny-t5-small")  # a different model, so a half-done overwrite would show
    monkeypatch.setattr(broken.tokenizer, "save_pretrained", broken_save)
    with pytest.raises(Boom):
        save_model(broken, target)  # fails after the model weights were written
    assert (target / "model.safetensors").read_bytes() == before
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert sorted(os.listdir(tmp_path)) == ["model"]


# --------------------------------------------------------------------------------------------- resolving


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny):
    runs = tmp_path_factory.mktemp("runs")
    save_model(tiny["tiny-gpt-small"], runs / "sst2" / "my-student" / "model")
    return runs


def test_resolve_builtin_first(tmp_path, monkeypatch):
    # Even a local folder with the same name does not shadow a builtin.
    (tmp_path / "tiny-t5-small").mkdir()
    (tmp_path / "tiny-t5-small" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tiny-t5-small") == ("builtin", "tiny-t5-small")


def test_resolve_run_name(runs_dir):
    expected = str((runs_dir / "sst2" / "my-student" / "model").resolve())
    assert resolve_model("my-student", task="sst2", runs_dir=runs_dir) == ("run", expected)
    with pytest.raises(XKDError, match="unknown model 'my-student'"):
        resolve_model("my-student", task="other-task", runs_dir=runs_dir)
    with pytest.raises(XKDError, match="unknown model"):
        resolve_model("my-student")  # no task workspace given


def test_resolve_run_before_local_path(runs_dir, tmp_path, monkeypatch):
    save_model(build_tiny_model("tiny-t5-small"), tmp_path / "my-student")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("my-student", task="sst2", runs_dir=runs_dir)[0] == "run"
    assert resolve_model("my-student") == ("path", str((tmp_path / "my-student").resolve()))


def test_resolve_local_paths(runs_dir, monkeypatch):
    model_dir = runs_dir / "sst2" / "my-student" / "model"
    assert resolve_model(str(model_dir)) == ("path", str(model_dir.resolve()))
    monkeypatch.chdir(runs_dir / "sst2")
    assert resolve_model("./my-student/model") == ("path", str(model_dir.resolve()))
    assert resolve_model("my-student/model") == ("path", str(model_dir.resolve()))


def test_resolve_aliases_and_hub_ids():
    assert resolve_model("t5-small") == ("hub", "google-t5/t5-small")
    assert resolve_model("t5-base") == ("hub", "google-t5/t5-base")
    assert resolve_model("t5-large") == ("hub", "google-t5/t5-large")
    assert resolve_model("t5-xl") == ("hub", "google/t5-v1_1-xl")
    assert resolve_model("google/flan-t5-small") == ("hub", "google/flan-t5-small")


def test_resolve_unknown_name_lists_choices():
    with pytest.raises(XKDError) as info:
        resolve_model("tiny-t5-smal")
    msg = str(info.value)
    assert "'tiny-t5-smal'" in msg and "Did you mean 'tiny-t5-small'" in msg
    for name in [*BUILTIN_MODELS.names(), *HUB_ALIASES]:
        assert name in msg
    assert "run name" in msg and "local model directory" in msg and "hub id" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("ref", ["./does-not-exist", "~/xkd-no-such-dir-9f3a", "/no/such/model", "runs/a/b"])
def test_resolve_missing_path(ref):
    with pytest.raises(XKDError, match="no such model directory"):
        resolve_model(ref)


def test_resolve_directory_without_config(tmp_path):
    with pytest.raises(XKDError, match="not a model directory"):
        resolve_model(str(tmp_path))


# --------------------------------------------------------------------------------------------- loading


def test_load_builtin_options():
    loaded = load_model("tiny-gpt-small", dtype="bfloat16", for_training=False)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    trainable = load_model("tiny-gpt-small")
    assert trainable.model.training and all(p.requires_grad for p in trainable.model.parameters())
    assert next(trainable.model.parameters()).dtype == torch.float32


def test_load_run_and_path_give_same_weights_and_tokenizer(runs_dir, tiny):
    from_run = load_model("my-student", task="sst2", runs_dir=runs_dir, for_training=False)
    from_path = load_model(str(runs_dir / "sst2" / "my-student" / "model"))
    assert (from_run.source, from_path.source) == ("run", "path")
    assert from_run.name == "my-student" and not from_run.is_encoder_decoder
    assert _state_equal(from_run.model, tiny["tiny-gpt-small"].model)
    size = check_same_tokenizer(tiny["tiny-gpt-large"].tokenizer, from_run.tokenizer, "tiny-gpt-large", "my-student")
    assert size == len(builtin_tokenizer())
    assert from_run.model.generation_config.pad_token_id == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dtype="float64"), "unknown dtype 'float64'"),
        (dict(quantization="2bit"), "unknown quantization '2bit'"),
        (dict(device="tpu9"), "device"),
    ],
)
def test_load_rejects_bad_options(kwargs, match):
    with pytest.raises(XKDError, match=match):
        load_model("tiny-gpt-small", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_load_cuda_without_cuda():
    with pytest.raises(XKDError, match="CUDA is not available"):
        load_model("tiny-gpt-small", device="cuda")


def test_hub_load_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(XKDError, match=r"could not load 'xkd-tests/no-such-model' from the Hugging Face hub \(offline\?\)"):
        load_model("xkd-tests/no-such-model")


def test_hub_connection_errors_are_wrapped(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(models.AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(XKDError, match="download it first or pass a local path"):
        load_model("t5-small")


def test_quantization_without_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(XKDError, match="pip install bitsandbytes"):
        load_model("tiny-gpt-small", quantization="4bit")


def test_quantized_tiny_model_runs():
    pytest.importorskip("bitsandbytes")
    try:
        loaded = load_model("tiny-gpt-small", quantization="4bit", dtype="float32", for_training=False)
    except XKDError as exc:
        pytest.skip(f"bitsandbytes cannot quantize on this machine: {exc}")
    kinds = {type(m).__name__ for m in loaded.model.modules()}
    assert "Linear4bit" in kinds
    assert loaded.source == "builtin"
    with torch.no_grad():
        logits = loaded.model(torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(logits).all()


# --------------------------------------------------------------------------------------------- tokenizers


def test_tokenizer_special_tokens():
    tok = builtin_tokenizer()
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, 1)
    assert 1000 <= len(tok) <= 4096


def test_builtin_tokenizer_copies_are_independent():
    a, b = builtin_tokenizer(), builtin_tokenizer()
    a.padding_side = "left"
    b.padding_side = "right"
    assert builtin_tokenizer().padding_side == "right" and a.padding_side == "left"
    assert load_tokenizer("tiny-t5-small").get_vocab() == a.get_vocab()


@pytest.mark.parametrize(
    "text",
    [
        "Grüße aus Köln, Äpfel und Öl: ß!",
        "emoji 😀🎉👩‍👩‍👧 done",
        "中文文本，日本語のテキスト、한국어",
        "spaces  before , punctuation . and\ttabs\nnewlines\r\n",
        "mixed Ελληνικά русский עברית العربية",
    ],
)
def test_tokenizer_round_trips_utf8(text):
    tok = builtin_tokenizer()
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_check_same_tokenizer_accepts_equal():
    assert check_same_tokenizer(builtin_tokenizer(), builtin_tokenizer(), "t", "s") == len(builtin_tokenizer())


def _variant(mutate) -> PreTrainedTokenizerFast:
    data = json.loads(builtin_tokenizer().backend_tokenizer.to_str())
    mutate(data)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def test_check_same_tokenizer_rejects_swapped_ids():
    def swap(data):
        vocab = data["model"]["vocab"]
        names = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i >= 100][:2]
        vocab[names[0]], vocab[names[1]] = vocab[names[1]], vocab[names[0]]

    other = _variant(swap)
    assert len(other) == len(builtin_tokenizer())
    with pytest.raises(XKDError, match=r"'big-teacher' and student 'small-student'.*token id 100"):
        check_same_tokenizer(builtin_tokenizer(), other, "big-teacher", "small-student")


def test_check_same_tokenizer_rejects_different_size():
    other = builtin_tokenizer()
    other.add_tokens(["<extra_token_0>"])
    with pytest.raises(XKDError, match=rf"'t5-large'.*'tiny-t5-small'.*{len(other) - 1} vs {len(other)} tokens"):
        check_same_tokenizer(builtin_tokenizer(), other, "t5-large", "tiny-t5-small")


def test_check_same_tokenizer_rejects_different_special_ids():
    other = builtin_tokenizer()
    other.pad_token = "</s>"
    with pytest.raises(XKDError, match="pad_token_id is 0 for the teacher but 1 for the student"):
        check_same_tokenizer(builtin_tokenizer(), other, "teacher-x", "student-y")
