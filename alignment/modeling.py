"""Loading and saving models: aliases, phase output folders, LoRA adapters, merged weights.

Anything `align` accepts as a model: the embedded model's alias, a Hugging Face model directory, a
LoRA adapter directory (its base model is read from ``adapter_config.json``), or a phase output
folder such as ``runs/quickstart/sft`` (its ``model/`` subfolder).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from alignment.config import LoRAConfig, ModelOptions
from alignment.errors import AlignError


def resolve_model(name_or_path: str | Path) -> Path:
    """A directory holding ``config.json`` or ``adapter_config.json`` for any accepted model name."""
    path = Path(name_or_path)
    for candidate in (path / "model", path):
        if (candidate / "config.json").exists() or (candidate / "adapter_config.json").exists():
            return candidate
    from alignment.default_model import resolve_model_path

    return Path(resolve_model_path(str(name_or_path)))


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").exists() and not (path / "config.json").exists()


def _load_kwargs(options: ModelOptions | None, dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` arguments: a recipe's ``model_options`` when given, else ``dtype`` and no remote code
    (said explicitly: left unsaid, transformers asks on a terminal and waits for an answer)."""
    return options.load_kwargs() if options is not None else {"dtype": dtype, "trust_remote_code": False}


def _weights_dir(path: Path, kwargs: dict[str, Any]) -> str:
    """``path`` for ``from_pretrained``, after refusing a model that needs its own modelling code unless remote
    code is trusted: one line that names the switch, not transformers' error. A model that ships code
    (``auto_map``) for an architecture transformers has built in loads with the built-in code, as transformers
    itself does without trust, so only an architecture unknown to transformers is refused."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = path / "config.json"
    if not kwargs.get("trust_remote_code") and config.exists():
        data = json.loads(config.read_text())
        if data.get("auto_map") and data.get("model_type") not in CONFIG_MAPPING:
            raise AlignError(
                "this model ships its own modelling code, which runs only when you trust it: "
                "model_options.trust_remote_code: true in a recipe, --trust-remote-code on the command line",
                file=config, field="auto_map")
    return str(path)


def load_tokenizer(path: str | Path, options: ModelOptions | None = None) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(path)
    if is_adapter(path) and not (path / "tokenizer_config.json").exists():
        path = resolve_model(json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"])
    trust = bool(options and options.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        # Padding positions never carry labels (labels come from the assistant mask), so reusing EOS
        # as the pad token cannot teach the model to skip EOS.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def on_inference_device(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` on the device that generates or scores fastest here: the GPU when there is one, else where it is.
    Every loader of a model for inference (evaluation, the app's candidates and head-to-head answers, ``align
    serve``) goes through this, so none is left generating on a CPU beside an idle GPU."""
    return model.to("cuda") if torch.cuda.is_available() else model


def load_causal_lm(path: str | Path, *, trainable_adapter: bool = False, dtype: torch.dtype = torch.float32,
                   merge_adapter: bool = False, options: ModelOptions | None = None) -> torch.nn.Module:
    """Load a causal LM; an adapter directory loads its base and the adapter on top of it. ``options`` (a
    recipe's ``model_options``: dtype, attention kernel, remote code) replaces ``dtype`` when given."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(path)
    kwargs = _load_kwargs(options, dtype)
    if is_adapter(path):
        from peft import PeftModel

        base_path = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(_weights_dir(resolve_model(base_path), kwargs), **kwargs)
        model = PeftModel.from_pretrained(base, str(path), is_trainable=trainable_adapter)
        if trainable_adapter and not merge_adapter:
            return model  # keep training the same adapter
        # Merged into plain weights; PEFT froze the base, so make it trainable again for full fine-tuning.
        return model.merge_and_unload().requires_grad_(True)
    model = AutoModelForCausalLM.from_pretrained(_weights_dir(path, kwargs), **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:
        raise AlignError(
            "this model is quantized and cannot be trained; save it without its quantization config first",
            file=path / "config.json", field="quantization_config",
        )
    return model


def apply_lora(model: torch.nn.Module, cfg: LoRAConfig, task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    """Wrap ``model`` with trainable LoRA adapters (PEFT) unless it already carries one.

    For a reward model (``task_type="SEQ_CLS"``) PEFT also trains the new score head in full.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, task_type=task_type)
    return get_peft_model(model, lora)


DROPOUT_ATTRIBUTES = ("attention_dropout", "attn_dropout", "dropout_p")  # probabilities attention reads per call


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout of ``model`` to 0, LoRA's included; returns how many were non-zero.

    ``nn.Dropout`` modules cover MLP, embedding, residual and LoRA dropout. Attention dropout is often a
    float on the attention module that the attention function reads in training mode (Llama, Qwen, Mistral,
    Gemma...), so those attributes are zeroed too.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            changed += module.p > 0
            module.p = 0.0
        for name in DROPOUT_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, float) and not isinstance(value, bool):
                changed += value > 0
                setattr(module, name, 0.0)
    return int(changed)


def is_reward_model(path: Path) -> bool:
    config = path / "config.json"
    if not config.exists():
        return False
    archs = json.loads(config.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def load_reward_model(path: str | Path, dtype: torch.dtype = torch.float32,
                      options: ModelOptions | None = None) -> torch.nn.Module:
    """A one-score sequence classifier: a trained reward model as is, or a causal LM (or adapter,
    merged first) with a new score head on its backbone. ``options`` as in :func:`load_causal_lm`."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(path)
    kwargs = _load_kwargs(options, dtype)
    dtype = kwargs["dtype"]
    if is_adapter(path):
        adapter_cfg = json.loads((path / "adapter_config.json").read_text())
        if adapter_cfg.get("task_type") == "SEQ_CLS":
            from peft import PeftModel

            base = AutoModelForSequenceClassification.from_pretrained(
                _weights_dir(resolve_model(adapter_cfg["base_model_name_or_path"]), kwargs), num_labels=1, **kwargs)
            return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        causal = load_causal_lm(path, merge_adapter=True, dtype=dtype, options=options)
        model = AutoModelForSequenceClassification.from_config(
            causal.config, num_labels=1, dtype=dtype, trust_remote_code=bool(options and options.trust_remote_code))
        missing, _ = model.load_state_dict(causal.state_dict(), strict=False)
        assert all("score" in k for k in missing), missing
        return model
    model = AutoModelForSequenceClassification.from_pretrained(_weights_dir(path, kwargs), num_labels=1, **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:
        raise AlignError("this model is quantized and cannot be trained", file=path / "config.json",
                         field="quantization_config")
    return model


def save_model(model: torch.nn.Module, tokenizer: Any, out_dir: Path, merged_dir: Path | None = None,
               options: ModelOptions | None = None) -> None:
    """Write a Hugging Face directory atomically (a temporary folder renamed into place).

    Under ZeRO-3 call it inside ``Engine.gathered()``. LoRA models write the adapter; ``merged_dir``
    also gets merged full weights, merged on a base loaded with ``options`` (the phase's ``model_options``:
    a base that needs its own modelling code loads only with ``trust_remote_code``). The merged weights are
    float32 whatever dtype the base was held in for training.
    """
    from peft import PeftModel

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    if merged_dir is not None and isinstance(model, PeftModel):
        # float32: a base held in bf16 under LoRA would otherwise round the merged weights to bf16
        full = dataclasses.replace(options, dtype="float32") if options is not None else None
        merged = load_causal_lm(out_dir, merge_adapter=True, options=full)
        mtmp = merged_dir.with_name(merged_dir.name + ".tmp")
        shutil.rmtree(mtmp, ignore_errors=True)
        merged.save_pretrained(str(mtmp), safe_serialization=True)
        tokenizer.save_pretrained(str(mtmp))
        shutil.rmtree(merged_dir, ignore_errors=True)
        mtmp.rename(merged_dir)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, ZeRO-3 partitioned parameters counted at full size."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
