"""Reading a reward model's score at the last real token.

Hugging Face sequence classifiers pool at "the last token that is not the pad token". When the pad
token is also EOS (SmolLM2, Llama, Qwen) and responses end in EOS, that picks the wrong position. We
instead capture the score head's per-token output with a forward hook and read it at the last
position of the attention mask: right padding, no guessing. The hook works the same through PEFT
wrappers and DeepSpeed engines, since it observes the head module itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATS_FILE = "reward_stats.json"


def score_module(model: torch.nn.Module) -> torch.nn.Module:
    """The score head: the outermost module named ``score`` (or ``classifier``)."""
    candidates = [(name, m) for name, m in model.named_modules()
                  if name.split(".")[-1] in ("score", "classifier")]
    if not candidates:
        raise ValueError("the reward model has no 'score' or 'classifier' head")
    return min(candidates, key=lambda nm: nm[0].count("."))[1]


class LastTokenScores:
    """Capture per-token scores (B, T) during a forward pass; :meth:`take` returns (B,)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._out: torch.Tensor | None = None
        self._handle = score_module(model).register_forward_hook(self._hook)

    def _hook(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self._out = output

    def take(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores at the last real token of each right-padded row."""
        assert self._out is not None, "run the model forward first"
        per_token = self._out[..., 0].float()  # (B, T)
        last = attention_mask.sum(dim=1).long() - 1  # (B,)
        self._out = None
        return per_token.gather(1, last.clamp(min=0).unsqueeze(1).to(per_token.device)).squeeze(1)  # (B,)

    def per_token(self) -> torch.Tensor:
        """Scores at every position (B, T): a critic's values."""
        assert self._out is not None, "run the model forward first"
        out, self._out = self._out[..., 0], None
        return out

    def remove(self) -> None:
        self._handle.remove()


def save_reward_stats(model_dir: Path, mean: float, std: float, count: int) -> None:
    """Mean and std of the scores on training responses; PPO normalises rewards with them."""
    (model_dir / STATS_FILE).write_text(json.dumps({"mean": mean, "std": std, "count": count}, indent=2))


def load_reward_stats(model_dir: Path) -> dict[str, float] | None:
    path = Path(model_dir) / STATS_FILE
    return json.loads(path.read_text()) if path.exists() else None
