"""A recipe's model_options (dtype, attention kernel, remote code) reach every model a phase loads, and a dtype
that would train weights in low precision is refused before anything loads."""

from __future__ import annotations

import pytest
import torch

from alignment.config import DPOConfig, PPOConfig, RMConfig, SFTConfig, load_config
from alignment.errors import AlignError
from alignment.run import step_hook


@pytest.mark.parametrize("config", [SFTConfig, DPOConfig, PPOConfig])
def test_a_low_precision_dtype_for_fully_trained_weights_is_refused(config, tmp_path):
    base = {"model": "x", "data.train": str(tmp_path / "d.jsonl"), "model_options.dtype": "bfloat16"}
    with pytest.raises(AlignError) as e:
        load_config(config, None, base)
    assert e.value.field == "model_options.dtype" and "round" in str(e.value)
    assert load_config(config, None, {**base, "lora.enabled": True}).model_options.dtype == "bfloat16"


def test_a_reward_model_keeps_float32_even_with_lora(tmp_path):
    with pytest.raises(AlignError, match="score head"):
        load_config(RMConfig, None, {"model": "x", "data.train": str(tmp_path / "d.jsonl"), "lora.enabled": True,
                                     "model_options.dtype": "float16"})


@pytest.mark.parametrize("bad, field", [({"model_options.dtype": "int8"}, "dtype"),
                                        ({"model_options.attn_implementation": " "}, "attn_implementation")])
def test_bad_options_name_their_field(bad, field, tmp_path):
    with pytest.raises(AlignError) as e:
        load_config(SFTConfig, None, {"model": "x", "data.train": str(tmp_path / "d.jsonl"), **bad})
    assert field in str(e.value)


def test_the_loaders_pass_the_options_to_transformers(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from alignment.config import ModelOptions
    from alignment.modeling import load_causal_lm, load_reward_model

    model = load_causal_lm(tiny_model_dir, options=ModelOptions(attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"
    assert load_reward_model(tiny_model_dir, options=ModelOptions(dtype="bfloat16")).dtype == torch.bfloat16
    seen: dict = {}
    original = AutoModelForCausalLM.from_pretrained

    def record(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    load_causal_lm(tiny_model_dir, options=ModelOptions(trust_remote_code=True))
    assert seen["trust_remote_code"] is True and seen["dtype"] == torch.float32


def test_lora_trains_on_a_bfloat16_base_with_float32_adapters(tmp_path, tiny_model_dir, sft_file):
    from alignment.sft import run_sft

    cfg = load_config(SFTConfig, None, {
        "model": str(tiny_model_dir), "output_dir": str(tmp_path / "sft"), "data.train": str(sft_file),
        "data.max_length": 64, "lora.enabled": True, "model_options.dtype": "bfloat16",
        "model_options.attn_implementation": "eager", "train.max_steps": 2, "train.batch_size": 2,
        "train.bf16": "false", "train.eval_every": 0, "train.save_every": 0, "tracking.backends": ["none"]})
    dtypes: dict[str, set] = {"trained": set(), "frozen": set()}

    class Seen:
        def begin(self, step) -> None:
            for p in step.engine.module.parameters():
                dtypes["trained" if p.requires_grad else "frozen"].add(p.dtype)

        def end(self, step) -> None: ...

    with step_hook(Seen()):
        run_sft(cfg)
    assert dtypes == {"trained": {torch.float32}, "frozen": {torch.bfloat16}}
    assert (tmp_path / "sft" / "model" / "adapter_config.json").exists()
