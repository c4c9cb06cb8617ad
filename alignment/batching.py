"""Token lists into padded (B, T) tensors: one padder for every phase and for evaluation.

Right padding for training and scoring (a reward model reads the last real token); left padding for
generation and for reading the last position of every row at once (PPO's prompts, the judge model).
The layouts that only one phase uses stay in that phase (SFT's packed rows: ``alignment.sft.collate``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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


Collate = Callable[[list[TokenizedPair], int], dict[str, torch.Tensor]]
"""(pairs, pad id) -> a pair batch: :func:`collate_pairs` or :func:`collate_shared_pairs`."""


def shared_prefix(pair: TokenizedPair) -> int:
    """Tokens at the start of a pair's two rows that are the same and trained on in neither: the prompt."""
    n = 0
    for a, b, la, lb in zip(pair.chosen_ids, pair.rejected_ids, pair.chosen_labels, pair.rejected_labels):
        if a != b or la != IGNORE_INDEX or lb != IGNORE_INDEX:
            break
        n += 1
    return n


def _shared_part(pair: TokenizedPair) -> int:
    """The tokens :func:`collate_shared_pairs` computes once for a pair: its prompt but the last token."""
    return max(shared_prefix(pair) - 1, 0)


def segment_rows(prefixes: Sequence[Sequence[int]], segments: Sequence[Sequence[Sequence[int]]],
                 labels: Sequence[Sequence[Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows that each hold a shared prefix once and then several segments, every segment attending to the prefix
    and to itself only, right-padded to (B, W).

    Row b is ``prefixes[b]`` followed by ``segments[b][0]``, ``segments[b][1]``, ...; ``labels[b][j]`` are
    segment j's labels, aligned with its ids (the prefix is labelled ``IGNORE_INDEX``). A segment's position ids
    continue from the prefix, so each of its tokens sees exactly what it would see in a row of its own (prefix +
    segment) and computes the same hidden state, while the prefix is computed once. The first label of every
    segment after the first is set to ``IGNORE_INDEX``: the token before it in the row belongs to another segment,
    so nothing there predicts it. Padding sees only itself (a mask row with nothing allowed would give NaN).

    Returns ``input_ids`` (B, W), ``attention_mask`` (B, 1, W, W) bool, ``position_ids`` (B, W), ``labels``
    (B, W), ``segment_starts`` (B, S) and ``segment_ends`` (B, S) (one past each segment's last token; S the most
    segments of a row, rows with fewer repeat their end), ``prompt_lengths`` (B,) the prefixes' lengths."""
    rows, row_labels, seg_of, starts, ends = [], [], [], [], []
    most = max(len(s) for s in segments)
    for prefix, segs, labs in zip(prefixes, segments, labels):
        ids, lab, which = list(prefix), [IGNORE_INDEX] * len(prefix), [0] * len(prefix)
        row_starts, row_ends = [], []
        for j, (seg, seg_labels) in enumerate(zip(segs, labs)):
            row_starts.append(len(ids))
            ids += seg
            lab += ([IGNORE_INDEX] + list(seg_labels[1:])) if j and seg else list(seg_labels)
            which += [j + 1] * len(seg)
            row_ends.append(len(ids))
        rows.append(ids)
        row_labels.append(lab)
        seg_of.append(which)
        starts.append(row_starts + [len(ids)] * (most - len(segs)))
        ends.append(row_ends + [len(ids)] * (most - len(segs)))
    ids, _ = pad_sequences(rows, pad_id)  # (B, W)
    width = ids.shape[1]
    lab, _ = pad_sequences(row_labels, IGNORE_INDEX, width=width)  # (B, W)
    which, _ = pad_sequences(seg_of, -1, width=width)  # (B, W): 0 prefix, j + 1 segment j, -1 padding
    prefix = torch.tensor([len(p) for p in prefixes])  # (B,)
    q, k = which[:, :, None], which[:, None, :]  # (B, W, 1), (B, 1, W)
    causal = torch.ones(width, width, dtype=torch.bool).tril()[None]  # (1, W, W)
    allowed = causal & (q >= 0) & ((k == 0) | (k == q))  # (B, W, W)
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # padding sees itself
    start = torch.tensor(starts)  # (B, S)
    pos = torch.arange(width)[None, :].expand(len(rows), width)  # (B, W)
    own_start = start.gather(1, (which - 1).clamp(min=0))  # (B, W) where each token's segment starts
    pos = torch.where(which > 0, prefix[:, None] + pos - own_start, pos)  # segments continue from the prefix
    return {"input_ids": ids, "attention_mask": allowed[:, None], "position_ids": pos, "labels": lab,
            "segment_starts": start, "segment_ends": torch.tensor(ends), "prompt_lengths": prefix}


def collate_shared_pairs(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per pair (:func:`segment_rows`): the prompt but its last token once, then the chosen segment, then
    the rejected segment, each segment starting with the prompt's last token (so each answer's first token is
    predicted from a position of its own, as in its own row).

    Every token of a segment sees exactly what it sees in its own row of :func:`collate_pairs` and computes the
    same hidden state, and the prompt is computed once per pair instead of twice. ``labels`` (B, W) hold both
    answers' labels in place; ``rejected_start`` (B,) is where the rejected segment begins; ``chosen_last`` /
    ``rejected_last`` (B,) index each row's last token; ``prompt_lengths`` (B,) the shared part;
    ``sequence_lengths`` (2B,) are the two rows' real lengths as :func:`collate_pairs` would hold them, chosen
    first."""
    shared = [_shared_part(p) for p in pairs]
    batch = segment_rows([p.chosen_ids[:n] for p, n in zip(pairs, shared)],
                         [[p.chosen_ids[n:], p.rejected_ids[n:]] for p, n in zip(pairs, shared)],
                         [[p.chosen_labels[n:], p.rejected_labels[n:]] for p, n in zip(pairs, shared)], pad_id)
    p, c, n = batch.pop("prompt_lengths"), batch["segment_starts"][:, 1], batch["segment_ends"][:, 1]  # (B,) each
    del batch["segment_starts"], batch["segment_ends"]
    return {
        **batch, "rejected_start": c, "chosen_last": c - 1, "rejected_last": n - 1, "prompt_lengths": p,
        "sequence_lengths": torch.cat([c, p + n - c]),
        "margin": torch.tensor([x.margin if x.margin is not None else 0.0 for x in pairs]),
        "weight": torch.tensor([x.weight for x in pairs], dtype=torch.float32),
    }


def mask_for(model: Any, mask: torch.Tensor) -> torch.Tensor:
    """A (B, 1, W, W) boolean mask in the form ``model``'s attention reads a custom mask: as it is for SDPA and the
    like; eager attention adds its mask to the scores, so it gets 0 where allowed and the float32 minimum elsewhere."""
    inner = model.module if model.__class__.__name__ == "DeepSpeedEngine" else model
    config = getattr(inner, "config", None)
    if getattr(config, "_attn_implementation", None) != "eager":
        return mask
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, torch.finfo(
        torch.float32).min)


def pair_rows(batch: dict[str, torch.Tensor], rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Which of a pair batch's 2B sequences (chosen 0..B-1, rejected B..2B-1) the (N,) positions at ``rows`` and
    ``cols`` of its rows belong to: the rows themselves in :func:`collate_pairs`' layout; in
    :func:`collate_shared_pairs`', a row's chosen segment or, from ``rejected_start`` on, its rejected one."""
    if "rejected_start" not in batch:
        return rows
    start = batch["rejected_start"].to(rows.device)[rows]  # (N,)
    return rows + batch["input_ids"].shape[0] * (cols >= start).long()


def shared_prompt_gap(measure: Callable[[dict[str, torch.Tensor]], torch.Tensor], pairs: list[TokenizedPair],
                      pad_id: int) -> float:
    """The mean |difference| between what ``measure`` reads from ``pairs`` collated as two rows each and as one
    shared-prompt row each (inf when the shared batch does not run: an attention that refuses a 4D mask), the
    largest over processes. Every process must call it alike (it runs the same two batches on each, as ZeRO-3's
    collective forwards need)."""
    plain = measure(collate_pairs(pairs, pad_id))
    try:
        local = float((measure(collate_shared_pairs(pairs, pad_id)) - plain).abs().mean())
    except (RuntimeError, ValueError, TypeError):
        local = float("inf")
    return dist.all_reduce_max(local)


def prompt_sharing(share: bool, check: Callable[[], tuple[bool, float]], log: Callable[[str], None],
                   difference: str, rows: str) -> bool:
    """Whether a phase runs its shared-prompt layout: ``share`` and ``check()`` (a batch read both ways: (alike,
    gap)) finds the two layouts alike. The decision is logged, ``difference`` naming what the gap measures and
    ``rows`` what the layout runs as one row ("each pair"). Decide on the starting weights, so a resumed run
    decides the same."""
    if not share:
        return False
    alike, gap = check()
    if alike:
        log(f"shared prompt: {rows} runs as one row, its prompt computed once (mean {difference} difference from "
            f"a row per answer {gap:.4f} on a first batch)")
        return True
    log(f"WARNING: shared prompt off: this model reads a shared-prompt row unlike a row per answer (mean "
        f"{difference} difference {gap:.3g}); every answer runs as a row of its own (slower, correct)")
    return False


def pair_layout(share: bool, pairs: list[TokenizedPair], check: Callable[[list[TokenizedPair]], tuple[bool, float]],
                log: Callable[[str], None], difference: str) -> Collate:
    """The layout a phase runs its pairs in: :func:`collate_shared_pairs` when :func:`prompt_sharing` finds
    ``check(pairs)`` (the phase's first batch read both ways) alike, else :func:`collate_pairs`."""
    if pairs and prompt_sharing(share, lambda: check(pairs), log, difference, "each pair"):
        return collate_shared_pairs
    return collate_pairs


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


def pair_lengths(pairs: list[TokenizedPair], collate: Collate = collate_pairs) -> list[int]:
    """Padded width each pair needs in a batch of the layout ``collate``: its longer side in
    :func:`collate_pairs`' rows, the prompt and both answers in :func:`collate_shared_pairs`' one row. What length
    grouping sorts by, so that a batch's rows are of similar width in the layout that actually runs."""
    if collate is collate_shared_pairs:
        return [len(p.chosen_ids) + len(p.rejected_ids) - _shared_part(p) for p in pairs]
    return [max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
