"""Token lists into padded (B, T) tensors: one padder for every phase and for evaluation.

Right padding for training and scoring (a reward model reads the last real token); left padding for
generation and for reading the last position of every row at once (PPO's prompts, the judge model).
The layouts that only one phase uses stay in that phase (SFT's packed rows: ``alignment.sft.collate``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignment import distributed as dist
from alignment.data.chat import IGNORE_INDEX
from alignment.data.preferences import TokenizedPair


def pad_sequences(seqs: Sequence[Sequence[int]], pad: int, *, left: bool = False,
                  width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one (B, T) id tensor and its (B, T) attention mask, padded on the left or the right
    to ``width`` (default: the longest list)."""
    width = max(len(s) for s in seqs) if width is None else width
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros_like(ids)  # (B, T) 1 on real tokens
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: (B, T) attention mask -> (B, T)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, right-padded into one (2B, T) batch; ``margin`` and ``weight``
    are (B,), in the order of ``pairs``."""
    seqs = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    labels = [p.chosen_labels for p in pairs] + [p.rejected_labels for p in pairs]
    ids, mask = pad_sequences(seqs, pad_id)  # (2B, T), (2B, T)
    lab, _ = pad_sequences(labels, IGNORE_INDEX, width=ids.shape[1])  # (2B, T)
    margins = torch.tensor([p.margin if p.margin is not None else 0.0 for p in pairs])  # (B,)
    weights = torch.tensor([p.weight for p in pairs], dtype=torch.float32)  # (B,) per-pair loss weight
    return {"input_ids": ids, "attention_mask": mask, "labels": lab, "margin": margins, "weight": weights}


def step_weight(micro_batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """The summed pair ``weight`` of one optimizer step: every micro-batch of this process, summed over processes.

    The RM and DPO steps scale each micro-batch's weighted mean by ``world * batch weight / step_weight`` (see
    :func:`step_share`), so a step optimises ``sum_i w_i * loss_i / sum_i w_i`` over all of its pairs whatever
    ``grad_accum`` and the process count: the ranks' gradients are averaged, hence the factor ``world``."""
    return dist.all_reduce_sum([sum(float(b["weight"].sum()) for b in micro_batches)])[0]


def step_share(batch: dict[str, torch.Tensor], total: float, world: int) -> float:
    """What one micro-batch's weighted-mean loss is multiplied by before backward: its part of the step's
    weight (``total``, from :func:`step_weight`), times ``world``; 0 when the whole step weighs 0 (nothing
    to learn from). With unit weights this is ``1 / grad_accum``, the plain mean of the step."""
    return world * float(batch["weight"].sum()) / total if total > 0 else 0.0


def pair_lengths(pairs: list[TokenizedPair]) -> list[int]:
    """Padded width each pair needs in a batch (its longer side): what length grouping sorts by."""
    return [max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
