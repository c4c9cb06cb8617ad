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


def shared_prefix(pair: TokenizedPair) -> int:
    """Tokens at the start of a pair's two rows that are the same and trained on in neither: the prompt."""
    n = 0
    for a, b, la, lb in zip(pair.chosen_ids, pair.rejected_ids, pair.chosen_labels, pair.rejected_labels):
        if a != b or la != IGNORE_INDEX or lb != IGNORE_INDEX:
            break
        n += 1
    return n


def collate_shared_pairs(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per pair: the prompt once, then the chosen answer, then the rejected one, right-padded to (B, W).

    The (B, 1, W, W) boolean attention mask lets each token see the tokens before it, except that the rejected
    answer does not see the chosen one; the position ids of the rejected answer start again where the prompt
    ends. So every answer token sees exactly what it sees in its own row of :func:`collate_pairs`, and the prompt
    is computed once per pair instead of twice. Padding positions see only themselves (a row of the mask with
    nothing allowed would give NaN). ``chosen_last`` / ``rejected_last`` (B,) index each answer's last token
    (the prompt's last token for an empty answer), ``prompt_lengths`` (B,) the shared part; ``sequence_lengths``
    (2B,) are the two rows' real lengths as :func:`collate_pairs` would hold them, chosen first."""
    splits = [(n := shared_prefix(p), len(p.chosen_ids) - n, len(p.rejected_ids) - n) for p in pairs]
    rows = [p.chosen_ids + p.rejected_ids[n:] for p, (n, _, _) in zip(pairs, splits)]
    ids, _ = pad_sequences(rows, pad_id)  # (B, W)
    width = ids.shape[1]
    prompt, chosen, rejected = (torch.tensor(v)[:, None, None] for v in zip(*splits))  # (B, 1, 1) each
    real = prompt + chosen + rejected  # (B, 1, 1)
    q = torch.arange(width)[None, :, None]  # (1, W, 1) query positions
    k = torch.arange(width)[None, None, :]  # (1, 1, W) key positions
    in_rejected = (q >= prompt + chosen) & (q < real)  # (B, W, 1)
    on_chosen = (k >= prompt) & (k < prompt + chosen)  # (B, 1, W)
    allowed = (k <= q) & (k < real) & (q < real) & ~(in_rejected & on_chosen)  # (B, W, W)
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # padding sees itself
    pos = torch.arange(width)[None, :].expand(len(pairs), width).clone()  # (B, W)
    pos = torch.where((pos >= (prompt + chosen)[:, 0]), pos - chosen[:, 0], pos)  # (B, W) the rejected restart
    p, c, r = (t.flatten() for t in (prompt, chosen, rejected))  # (B,) each
    return {
        "input_ids": ids, "attention_mask": allowed[:, None], "position_ids": pos,
        "chosen_last": p + c - 1, "rejected_last": torch.where(r > 0, p + c + r - 1, p - 1),
        "prompt_lengths": p, "sequence_lengths": torch.cat([p + c, p + r]),
        "margin": torch.tensor([x.margin if x.margin is not None else 0.0 for x in pairs]),
        "weight": torch.tensor([x.weight for x in pairs], dtype=torch.float32),
    }


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
