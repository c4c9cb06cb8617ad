"""Settings and inputs that would train the wrong thing without a word are refused or handled the same way
on every path: gradient clipping, the output-layer shortcut, dropout in preference and RL phases, empty
prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignment.config import SFTConfig, TrainConfig, load_config
from alignment.errors import AlignError


# --------------------------------------------------------------------------------------------------
# max_grad_norm
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "0.0"])
def test_max_grad_norm_zero_or_negative_is_refused_with_file_line_and_field(tmp_path: Path, value: str) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "hello"}\n', encoding="utf-8")
    path = tmp_path / "sft.yaml"
    path.write_text(f"data:\n  train: t.jsonl\ntrain:\n  epochs: 1\n  max_grad_norm: {value}\n", encoding="utf-8")
    with pytest.raises(AlignError) as info:
        load_config(SFTConfig, path)
    err = info.value
    assert err.field == "train.max_grad_norm"
    assert err.file == str(path) and err.line == 5
    assert "null" in str(err)  # the message says how to turn clipping off


def test_max_grad_norm_null_turns_clipping_off(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "hello"}\n', encoding="utf-8")
    path = tmp_path / "sft.yaml"
    path.write_text("data:\n  train: t.jsonl\ntrain:\n  max_grad_norm: null\n", encoding="utf-8")
    assert load_config(SFTConfig, path).train.max_grad_norm is None


def _one_step(max_grad_norm: float | None) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One plain-torch Engine step of SGD-like size on a linear layer whose gradient norm is 60."""
    from alignment.training import Engine

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    before = layer.weight.detach().clone()
    cfg = TrainConfig(max_steps=1, lr=0.1, warmup_ratio=0.0, max_grad_norm=max_grad_norm, scheduler="constant")
    engine = Engine(layer, cfg, total_steps=1, bf16=False, deepspeed_config=None)
    x = torch.full((1, 4), 30.0)
    loss = engine.forward(input=x).sum()  # d loss / d w = 30 per weight: norm 60
    engine.backward(loss)
    grads = layer.weight.grad.detach().clone()
    norm = engine.step()
    return norm, grads, layer.weight.detach() - before


def test_unclipped_step_reports_the_true_norm_and_keeps_the_gradient() -> None:
    norm, grads, delta = _one_step(None)
    assert norm == pytest.approx(60.0)
    assert torch.allclose(grads, torch.full_like(grads, 30.0))
    assert delta.abs().min() > 0  # the weights moved


def test_clipped_step_reports_the_norm_before_clipping() -> None:
    norm, _, delta = _one_step(1.0)
    assert norm == pytest.approx(60.0)
    assert delta.abs().min() > 0


def test_deepspeed_and_trainer_paths_read_null_as_no_clipping() -> None:
    from alignment import distributed as dist

    filled = dist.fill_auto({"gradient_clipping": "auto"}, micro_batch=2, grad_accum=1, max_grad_norm=None,
                            bf16_weights=False)
    assert filled["gradient_clipping"] == 0.0  # DeepSpeed's "off"
    filled = dist.fill_auto({"gradient_clipping": "auto"}, micro_batch=2, grad_accum=1, max_grad_norm=0.5,
                            bf16_weights=False)
    assert filled["gradient_clipping"] == 0.5


# --------------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def dropout_model_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny model with attention dropout 0.3 in its config (as some base models ship)."""
    import json
    import shutil

    out = tmp_path / "dropout-model"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["attention_dropout"] = 0.3
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_disable_dropout_covers_attention_modules_and_lora(dropout_model_dir: Path) -> None:
    from alignment.config import LoRAConfig
    from alignment.modeling import apply_lora, disable_dropout, load_causal_lm

    model = apply_lora(load_causal_lm(dropout_model_dir), LoRAConfig(enabled=True, r=4, dropout=0.2))
    with torch.no_grad():  # LoRA starts as a no-op (B = 0); make it act so its dropout shows
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.train()
    ids = torch.arange(3, 40).unsqueeze(0)
    torch.manual_seed(0)
    a = model(input_ids=ids).logits
    b = model(input_ids=ids).logits
    assert not torch.allclose(a, b)  # dropout noise: two training-mode forwards differ
    # 2 layers x (attention + LoRA dropout on each adapted projection)
    assert disable_dropout(model) >= 4
    torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert model.config.attention_dropout == 0.3  # the saved config is the user's, untouched
    assert disable_dropout(model) == 0


def _dpo_first_step(tmp_path: Path, model: Path, prefs: Path, **top) -> tuple[dict, str]:
    import json

    from alignment.cli import main
    from alignment.tracking import read_metrics

    out = tmp_path / f"dpo-{len(top)}"
    recipe = {"phase": "dpo", "model": str(model), "output_dir": str(out), "beta": 0.1, "precompute_ref": True,
              "data": {"train": str(prefs), "max_length": 64, "split": {"train": 0.9, "validation": 0.1}},
              "train": {"max_steps": 1, "batch_size": 4, "bf16": "false", "eval_every": 0, "save_every": 0},
              "tracking": {"backends": ["none"]}, **top}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["dpo", "--config", str(path)]) == 0
    return read_metrics(out / "metrics.jsonl")[0], out.name


def test_dpo_trains_without_dropout_unless_asked(tmp_path: Path, dropout_model_dir: Path, toy_preferences: Path,
                                                 capsys) -> None:
    first, _ = _dpo_first_step(tmp_path, dropout_model_dir, toy_preferences)
    # Before any update the policy is its reference: every implicit reward is exactly zero without dropout.
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert "dropout turned off" in capsys.readouterr().out
    noisy, _ = _dpo_first_step(tmp_path, dropout_model_dir, toy_preferences, disable_dropout=False)
    assert abs(noisy["rewards/chosen"]) > 1e-3  # the same run with the model's dropout: reward noise at step 1


def _by_hand(kind: str) -> list[float]:
    """Peak 0.5, 10 steps, warm-up over 2: 0.25 and 0.5 (never a step at 0), then the decay over the other 8."""
    import math

    decay = {"cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "linear": lambda p: 1 - p,
             "constant": lambda p: 1.0}[kind]
    return [0.25, 0.5] + [0.5 * decay((s - 2) / 8) for s in range(2, 10)]


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_the_learning_rate_follows_the_schedule(kind: str) -> None:
    from alignment.training import Engine

    layer = torch.nn.Linear(2, 1)
    cfg = TrainConfig(max_steps=10, lr=0.5, warmup_ratio=0.2, scheduler=kind)
    engine = Engine(layer, cfg, total_steps=10, bf16=False, deepspeed_config=None)
    seen = []
    for _ in range(10):
        seen.append(engine.optimizer.param_groups[0]["lr"])
        engine.backward(engine.forward(input=torch.ones(1, 2)).sum())
        engine.step()
    assert seen == pytest.approx(_by_hand(kind))


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_kto_trains_on_the_same_schedule(kind: str) -> None:
    """KTO runs in transformers' Trainer; its create_scheduler is replaced by ours, so the first step is not
    spent at learning rate 0 as with transformers' warm-up."""
    from types import SimpleNamespace

    from alignment.kto import _with_our_schedule

    class FakeTrainer:  # what create_scheduler reads of transformers' Trainer
        def __init__(self) -> None:
            self.lr_scheduler = None
            self.optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.5)
            self.args = SimpleNamespace(get_warmup_steps=lambda total: int(0.2 * total))

    trainer = _with_our_schedule(FakeTrainer, kind)()
    scheduler = trainer.create_scheduler(10)
    assert trainer.create_scheduler(10) is scheduler  # made once, as transformers does
    seen = []
    for _ in range(10):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(_by_hand(kind))
