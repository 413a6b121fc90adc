"""LoRA / QLoRA: adapters train and nothing else, quantized (bitsandbytes, CPU) models load and train,
saved adapters and merged exports reload to the same model, bad options are refused in one line."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from xkd_cli.models.lora import adaptable_module_names, apply_lora
from xkd_cli.models.loading import load_model, save_model
from xkd_cli.models.zoo import build_tiny_model
from xkd_cli.objectives.reward import RewardHead
from xkd_cli.training.loop import set_dropout

pytest.importorskip("bitsandbytes")

SHORT = ["--task", "synth-mt", "--max-steps", "3", "--batch-size", "4", "--max-input-len", "48",
         "--max-output-len", "12", "--log-every", "1", "--lr", "0.01", "--json"]
IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])


def logits(loaded, ids=IDS):
    with torch.no_grad():
        if loaded.is_encoder_decoder:
            return loaded.model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
        return loaded.model(input_ids=ids).logits


def record(runs, name):
    return json.loads((runs / "synth-mt" / name / "run.json").read_text())


def lora_weights(runs, name):
    return load_file(runs / "synth-mt" / name / "model" / "adapter_model.safetensors")


def base_state(peft_loaded):
    """The base model's own weights inside a peft model, under their plain transformers names."""
    base = peft_loaded.model.get_base_model()
    return {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}


# --------------------------------------------------------------------------------------------- training


def test_lora_sft_trains_only_the_adapters(xkd, runs):
    result = xkd("sft", "--model", "tiny-t5-small", *SHORT, "--name", "lora", "--lora-r", "4")
    assert result.code == 0, result.err
    model_dir = runs / "synth-mt" / "lora" / "model"
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "model.safetensors").exists()
    info = record(runs, "lora")
    # q and v (128 -> 128) in 2 encoder self-attentions and 2 x (self + cross) decoder attentions: 12 layers,
    # each with A (4 x 128) and B (128 x 4).
    assert info["lora"]["targets"] == ["q", "v"] and info["lora"]["base_model"] == "tiny-t5-small"
    assert info["lora"]["trainable_parameters"] == 12 * (4 * 128 + 128 * 4) == 12288
    assert info["quantization"] is None

    trained = load_model("lora", task="synth-mt", runs_dir=runs, for_training=False)
    fresh = build_tiny_model("tiny-t5-small").model.state_dict()
    base = base_state(trained)
    assert set(base) == set(fresh)
    assert all(torch.equal(base[k], fresh[k]) for k in fresh), "a frozen base weight changed"

    saved = lora_weights(runs, "lora")
    assert len(saved) == 24
    start = apply_lora(build_tiny_model("tiny-t5-small"), r=4, alpha=16.0, dropout=0.05, targets=None,
                       quantization=None, seed=42).model.state_dict()
    start = {k.replace(".default", ""): v for k, v in start.items() if "lora_" in k}
    for key, value in saved.items():
        assert not torch.equal(value, start[key]), f"{key} did not train"
    assert all(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)  # B starts at exactly 0


@pytest.mark.parametrize("bits", ["8", "4"])
def test_qlora_sft_loads_quantized_and_trains_on_cpu(xkd, runs, bits):
    result = xkd("sft", "--model", "tiny-gpt-small", *SHORT, "--name", f"q{bits}", "--lora-r", "4",
                 f"--load-in-{bits}bit")
    assert result.code == 0, result.err
    info = record(runs, f"q{bits}")
    assert info["quantization"] == f"{bits}bit" and info["lora"]["targets"] == ["q_proj", "v_proj"]
    # 4 layers x (q_proj, v_proj) of 128 -> 128, rank 4
    assert info["lora"]["trainable_parameters"] == 8 * (4 * 128 + 128 * 4)
    saved = lora_weights(runs, f"q{bits}")
    assert all(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)

    loaded = load_model(f"q{bits}", task="synth-mt", runs_dir=runs, for_training=False, quantization=f"{bits}bit")
    kinds = {type(m).__name__ for m in loaded.model.modules()}
    assert ("Linear8bitLt" if bits == "8" else "Linear4bit") in kinds
    assert torch.isfinite(logits(loaded)).all()


def test_gxkd_with_4bit_teacher_trains_adapters_and_reward_head(xkd, runs):
    result = xkd("distill", "--method", "gxkd", "--teacher", "tiny-t5-base", "--teacher-load-in-4bit",
                 "--student", "tiny-t5-small", "--lora-r", "4", "--lam", "0.5", "--alpha", "0.5", *SHORT,
                 "--name", "gx")
    assert result.code == 0, result.err
    info = record(runs, "gx")
    assert info["teacher_quantization"] == "4bit" and info["lora"]["r"] == 4
    head = RewardHead.load(runs / "synth-mt" / "gx" / "reward_head.safetensors")
    assert head.proj.weight.abs().sum() > 0  # zero at init: it trained beside the adapters
    saved = lora_weights(runs, "gx")
    assert all(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)


# --------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_saved_adapter_reloads_to_the_same_logits(tmp_path, quantization):
    loaded = load_model("tiny-gpt-small", quantization=quantization)
    loaded = apply_lora(loaded, r=4, alpha=8.0, dropout=0.0, targets=("q_proj", "v_proj", "down_proj"),
                        quantization=quantization, seed=0)
    with torch.no_grad():  # B starts at 0: give the adapters a value that shows in the logits
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    loaded.model.eval()
    expected = logits(loaded)
    save_model(loaded, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "xkd_adapter.json").read_text())["base_location"] == "tiny-gpt-small"

    again = load_model(str(tmp_path / "adapter"), for_training=False, quantization=quantization)
    assert torch.equal(logits(again), expected)
    assert not torch.allclose(logits(load_model("tiny-gpt-small", quantization=quantization)), expected)


def test_merged_export_loads_with_plain_transformers(xkd, runs):
    result = xkd("sft", "--model", "tiny-t5-small", *SHORT, "--name", "m", "--lora-r", "4", "--lora-targets",
                 "q,v,wo", "--merge-lora")
    assert result.code == 0, result.err
    merged_dir = runs / "synth-mt" / "m" / "merged"
    assert record(runs, "m")["merged_model"] == str(merged_dir)
    assert not any(merged_dir.glob("adapter*"))

    plain = AutoModelForSeq2SeqLM.from_pretrained(merged_dir)
    with torch.no_grad():
        merged_logits = plain(input_ids=IDS, decoder_input_ids=IDS[:, :3]).logits
    adapter_logits = logits(load_model("m", task="synth-mt", runs_dir=runs, for_training=False))
    base_logits = logits(build_tiny_model("tiny-t5-small"))
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the merge really folded something in


def test_merged_export_of_a_qlora_run_is_full_precision(xkd, runs):
    result = xkd("sft", "--model", "tiny-gpt-small", *SHORT, "--name", "qm", "--lora-r", "4", "--load-in-4bit",
                 "--merge-lora")
    assert result.code == 0, result.err
    plain = AutoModelForCausalLM.from_pretrained(runs / "synth-mt" / "qm" / "merged")
    assert getattr(plain.config, "quantization_config", None) is None
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    reference = load_model("qm", task="synth-mt", runs_dir=runs, for_training=False)  # fp32 base + adapter
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, logits(reference), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------- using a LoRA run


def test_lora_run_works_wherever_a_run_name_is_accepted(xkd, runs):
    assert xkd("sft", "--model", "tiny-t5-small", *SHORT, "--name", "lora", "--lora-r", "4").code == 0

    result = xkd("eval", "--model", "lora", "--task", "synth-mt", "--limit", "3", "--max-new-tokens", "6", "--json")
    assert result.code == 0, result.err
    assert (runs / "synth-mt" / "lora" / "eval").is_dir() and result.json()["examples"] == 3

    result = xkd("gen-teacher", "--teacher", "lora", "--task", "synth-mt", "--limit", "2", "--max-new-tokens", "6",
                 "--json")
    assert result.code == 0, result.err

    # A LoRA run as the student: merged into its base, then fully fine-tuned (every weight trains).
    result = xkd("distill", "--method", "skd", "--teacher", "tiny-t5-base", "--student", "lora", *SHORT,
                 "--name", "full")
    assert result.code == 0, result.err
    assert (runs / "synth-mt" / "full" / "model" / "model.safetensors").is_file()
    # ... or with a new adapter on top: the new adapter's base is the LoRA run.
    result = xkd("distill", "--method", "skd", "--teacher", "lora", "--student", "lora", "--lora-r", "2", *SHORT,
                 "--name", "stacked")
    assert result.code == 0, result.err
    base = json.loads((runs / "synth-mt" / "stacked" / "model" / "xkd_adapter.json").read_text())
    assert base["base_source"] == "run" and base["base_location"] == str((runs / "synth-mt" / "lora" / "model").resolve())
    stacked = load_model("stacked", task="synth-mt", runs_dir=runs, for_training=False)
    assert torch.isfinite(logits(stacked)).all()


# --------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("args, message", [
    (["--load-in-4bit"], "--load-in-4bit cannot train the quantized weights themselves: add --lora-r 8"),
    (["--load-in-8bit"], "--load-in-8bit cannot train the quantized weights themselves"),
    (["--lora-r", "4", "--load-in-8bit", "--load-in-4bit"], "--load-in-8bit and --load-in-4bit exclude each other"),
    (["--lora-r", "-1"], "--lora-r must be in [0, inf], got -1"),
    (["--lora-r", "4", "--lora-alpha", "0"], "--lora-alpha must be in (0, inf], got 0.0"),
    (["--lora-r", "4", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    (["--lora-r", "4", "--lora-targets", "q,,v"], "--lora-targets must be comma-separated module names"),
    (["--lora-targets", "q,v"], "--lora-targets needs --lora-r > 0"),
    (["--merge-lora"], "--merge-lora needs --lora-r > 0"),
    (["--lora-r", "4", "--lora-targets", "q,query"],
     "--lora-targets: no linear layer named 'query' in 'tiny-t5-small'; valid names: k, lm_head, o, q, v, wi, wo"),
])
def test_bad_lora_options_are_refused_in_one_line(xkd, runs, args, message):
    result = xkd("sft", "--model", "tiny-t5-small", *SHORT, "--name", "bad", *args)
    assert result.code == 2
    assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (runs / "synth-mt" / "bad").exists()


def test_bad_teacher_quantization_is_refused(xkd, runs):
    result = xkd("distill", "--method", "gkd", "--teacher", "tiny-t5-base", "--student", "tiny-t5-small",
                 "--teacher-load-in-8bit", "--teacher-load-in-4bit", *SHORT)
    assert result.code == 2 and "--teacher-load-in-8bit and --teacher-load-in-4bit exclude each other" in result.err
    result = xkd("eval", "--model", "tiny-t5-small", "--task", "synth-mt", "--load-in-8bit", "--load-in-4bit")
    assert result.code == 2 and "--load-in-8bit and --load-in-4bit exclude each other" in result.err


def test_valid_target_names_and_lora_dropout_is_not_overridden():
    t5 = build_tiny_model("tiny-t5-small")
    assert adaptable_module_names(t5.model) == ["k", "lm_head", "o", "q", "v", "wi", "wo"]
    peft = apply_lora(t5, r=2, alpha=4.0, dropout=0.3, targets=None, quantization=None, seed=0)
    set_dropout(peft.model, 0.0)  # --dropout sets the model's dropout, --lora-dropout the adapters'
    rates = {name: m.p for name, m in peft.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert {p for n, p in rates.items() if ".lora_dropout." in f".{n}."} == {0.3}
    assert {p for n, p in rates.items() if ".lora_dropout." not in f".{n}."} == {0.0}


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_model_does_not_keep_its_checkpoint_mapped(tmp_path, quantization):
    """The full-precision checkpoint is read to quantize it; afterwards no tensor may still view the file
    (one view keeps every page read while quantizing resident: the memory 4-bit was meant to save)."""
    save_model(build_tiny_model("tiny-t5-small"), tmp_path / "fp32")
    checkpoint = str(tmp_path / "fp32" / "model.safetensors")
    loaded = load_model(str(tmp_path / "fp32"), quantization=quantization, for_training=False)
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if checkpoint in line]
    reference = load_model(str(tmp_path / "fp32"), for_training=False)  # plain loads may map it: views are free
    assert torch.isfinite(logits(loaded)).all()
    assert (logits(loaded) - logits(reference)).abs().max() < 1.0  # quantized, but the same model
