"""One generation engine for evaluation, the app's candidates and PPO rollouts.

:func:`decode` is the loop: a prefill of the left-padded prompts, then one token per step with a KV cache. Rows
that emitted a stop token leave the batch (their cache rows too), so a batch whose answers end early stops
paying for them, which ``model.generate`` keeps doing until the last row ends. Greedy is the argmax, the same
tokens as ``generate`` (the tests check it). Sampling draws from ``generate``'s distribution (temperature, then
top-p with at least one token kept) but not with its random numbers: ``generate`` draws with an exponential
variate per vocabulary entry and sorts the whole vocabulary for top-p, per row and step, which cost more than
the model's own step at batch 32 on a 2-core CPU (README, Generation). :func:`next_tokens` draws with one
uniform per row (inverse CDF) and looks for the nucleus among the most likely tokens first, sorting the whole
row only when the nucleus is wider than that. :func:`generate` wraps :func:`decode` for chat prompts, and
:func:`answer` turns a row of new tokens into the answer both it and `align serve` report.

A caller that needs the tokens as they are drawn (`align serve` streams them, and cuts answers at stop strings
decode knows nothing of) passes ``on_step``: it is called after every step with the rows still generating and
their new tokens, and ends the loop early by returning True.

On a CPU, decode's matrix products of a few rows run on weights packed once per call (:mod:`alignment.packing`),
1.4-1.9x faster than ``F.linear``'s in fp32 on the default model; a caller generating many batches packs once
around all of them (:func:`generate` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment.data.chat import generation_eos_ids, render
from alignment.packing import packed_linears
from alignment.training import autocast, use_bf16


@dataclass
class Answer:
    text: str
    num_tokens: int  # generated tokens, the stop token included
    finished: bool  # stopped on an end-of-turn token rather than at max_new_tokens


# decode's per-step callback: (rows still generating, in the batch's original numbering; the token each just
# drew), both (b,) tensors on the model's device. Returning True stops decode after this step.
OnStep = Callable[[torch.Tensor, torch.Tensor], bool | None]


def answer(tokenizer: Any, ids: torch.Tensor | Sequence[int], stop_ids: torch.Tensor | Sequence[int]) -> Answer:
    """The answer in a row of new tokens ``ids`` (as :func:`decode` returns them: up to and including the first
    stop token, padding after it): the text up to the first stop token without special tokens or surrounding
    whitespace, the number of tokens generated (the stop token included) and whether a stop token ended it.
    Padding is dropped unless the pad token is itself a stop token (then the first one ends the answer)."""
    tokens = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    stops = {int(t) for t in (stop_ids.tolist() if isinstance(stop_ids, torch.Tensor) else stop_ids)}
    if tokenizer.pad_token_id not in stops:
        tokens = [t for t in tokens if t != tokenizer.pad_token_id]
    n = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
    text = tokenizer.decode(tokens[:n], skip_special_tokens=True).strip()
    return Answer(text, n, n > 0 and tokens[n - 1] in stops)


# How many of the most likely tokens are searched for a row's nucleus, in turn, before the row is sorted in full.
# Measured on the embedded model answering held-out prompts at temperature 1, top-p 0.95 (1,535 row steps):
# the nucleus was at most 256 tokens in 77% of them, at most 1,024 in 95%, never over 3,009; a top-k of 256 over
# the 49,152-token vocabulary cost about 1/18 of a full sort at batch 32 (7.6 ms against 137, 2 busy CPU cores).
NUCLEUS_CANDIDATES = (256, 4096)


def _draw(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B,) a column of each row of non-negative ``weights`` (B, n), column j with probability weights[j] / the
    row's sum, picked by the uniforms ``u`` (B, 1) in [0, 1): inverse CDF, summed in float64 so that tokens of
    tiny probability keep their share on every device (a float32 scan adds 1e-8 to 0.999 as nothing)."""
    cdf = weights.cumsum(dim=-1, dtype=torch.float64)
    total = cdf[:, -1:]
    broken = ~((total > 0) & torch.isfinite(total)).squeeze(1)
    column = torch.searchsorted(cdf, u * total, right=True).squeeze(1)  # a column of positive weight ...
    over = column >= weights.shape[-1]  # ... unless u * total rounded up to total: the last such column then
    if bool((broken | over).any()):  # the step's one wait for the device, and only rarely true
        if bool(broken.any()):  # as torch.multinomial refuses them
            raise ValueError("the next-token probabilities of a row contain NaN or inf or sum to 0: the model's "
                             "logits are broken (NaN or all -inf)")
        column[over] = (cdf[over] < total[over]).sum(dim=-1)
    return column


def nucleus_draw(probs: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """(B,) a token of each row of ``probs`` (B, V) from its top-p nucleus, picked by the uniforms ``u`` (B, 1).

    The nucleus is transformers' TopPLogitsWarper's: the most likely tokens, each kept when the tokens more
    likely than it hold less than ``top_p`` (so the most likely one always). The draw is the inverse CDF over the
    nucleus in order of probability, so u near 0 picks the most likely token and u near 1 the least likely one
    kept. Each row is looked for among its :data:`NUCLEUS_CANDIDATES` most likely tokens, then sorted in full
    only if the nucleus is wider; which of these found it does not change the token drawn."""
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    rows = torch.arange(probs.shape[0], device=probs.device)  # the rows whose nucleus is still to be found
    vocab = probs.shape[-1]
    for k in [c for c in NUCLEUS_CANDIDATES if c < vocab] + [vocab]:
        part = probs if rows.numel() == probs.shape[0] else probs[rows]
        top, index = part.topk(k, dim=-1) if k < vocab else part.sort(dim=-1, descending=True)
        reached = top.cumsum(dim=-1)
        done, rows = rows, rows[:0]
        # a row whose k most likely tokens hold less than top_p has a wider nucleus: the next search (a full sort
        # always holds it)
        found = reached[:, -1] >= top_p
        if k < vocab and not bool(found.all()):
            top, index, reached, done, rows = top[found], index[found], reached[found], done[found], done[~found]
        keep = (reached - top) < top_p
        keep[:, 0] = True
        tokens[done] = index.gather(1, _draw(top * keep, u[done])[:, None]).squeeze(1)
        if rows.numel() == 0:
            break
    return tokens


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(B,) the next token of each row from its (B, V) float32 logits: argmax when ``temperature`` is 0, else a
    draw from softmax(logits / temperature) restricted to the top-p nucleus. One uniform per row from torch's
    global generator."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = (logits / temperature).softmax(dim=-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device)
    return _draw(probs, u) if top_p >= 1.0 else nucleus_draw(probs, top_p, u)


@torch.no_grad()
def decode(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
           stop_ids: list[int] | torch.Tensor, pad_id: int, temperature: float = 0.0,
           top_p: float = 1.0, on_step: OnStep | None = None) -> torch.Tensor:
    """(B, N) new tokens for left-padded prompts ``input_ids`` (B, P) with ``attention_mask`` (B, P): each row
    up to and including its first stop token, ``pad_id`` after it; N is the longest answer (at most
    ``max_new_tokens``). The caller sets the RNG seed, the autocast and the model's mode. On a CPU the model's
    linear layers multiply with weights packed for the call where that is measured faster (:mod:`alignment.packing`).

    ``on_step(rows, tokens)``, when given, is called after each step with the indices (in ``input_ids``'
    numbering) of the rows that drew a token in it and those tokens, so ``tokens[i]`` is the next token of row
    ``rows[i]``, the same one the returned tensor holds; a row that drew a stop token is in no later step. When
    it returns True, decode stops after that step (the caller has what it needs, e.g. every answer was cut by
    a stop string) and returns the tokens drawn so far."""
    with packed_linears(model, rows=input_ids.shape[0]):
        return _decode(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                       pad_id=pad_id, temperature=temperature, top_p=top_p, on_step=on_step)


def _decode(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
            stop_ids: list[int] | torch.Tensor, pad_id: int, temperature: float, top_p: float,
            on_step: OnStep | None) -> torch.Tensor:
    from transformers import DynamicCache

    device = input_ids.device
    stops = torch.as_tensor(stop_ids, dtype=torch.long, device=device)
    batch = input_ids.shape[0]
    out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # what generate gives padded prompts
    # a growing cache: transformers' pre-allocated StaticCache measured no faster on CPU (it attends over its whole
    # length every step) and fails under bf16 autocast, where keys and values differ in dtype (README, Generation)
    cache = DynamicCache()
    alive = torch.arange(batch, device=device)  # the batch rows still generating, in out's numbering
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1].float()  # (B, V)
    length = 0
    for step in range(max_new_tokens):
        token = next_tokens(logits, temperature, top_p)  # (b,)
        out[alive, step] = token
        length = step + 1
        if on_step is not None and on_step(alive, token):
            break
        if step + 1 == max_new_tokens:
            break
        done = torch.isin(token, stops)
        if bool(done.any()):  # one host sync per step; the rest of the step stays on the device
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive, token, mask = alive[keep], token[keep], mask[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = mask.sum(dim=1, keepdim=True) - 1  # (b, 1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                       past_key_values=cache, use_cache=True).logits[:, -1].float()
    return out[:, :length]


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], *, max_new_tokens: int = 128,
             batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, bf16: str = "auto",
             seed: int = 0, desc: str = "generate", progress: bool = True) -> list[Answer]:
    """Answers to chat prompts (message lists ending with a user turn), in prompt order.

    Prompts are sorted by length so each batch pads little, then answers are put back in order.
    Greedy when ``temperature`` is 0.
    """
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[Answer] = [Answer("", 0, False)] * len(texts)
    # the generation config's stop tokens (what model.generate stopped on): those answers are finished
    stop_ids = torch.tensor(generation_eos_ids(tokenizer, model.generation_config), dtype=torch.long)
    torch.manual_seed(seed)
    # packed once for every batch (decode would pack per batch)
    with autocast(use_bf16(bf16)), packed_linears(model, rows=min(batch_size, len(texts))):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=not progress):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            new = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                         stop_ids=stop_ids, pad_id=tokenizer.pad_token_id, temperature=temperature,
                         top_p=top_p)  # (B, new_tokens)
            for row, i in enumerate(idx):
                answers[i] = answer(tokenizer, new[row], stop_ids)
    tokenizer.padding_side = "right"
    return answers
