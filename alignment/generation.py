"""Batched generation for evaluation: left padding, KV cache, stop at the end-of-turn token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment.data.chat import generation_eos_ids
from alignment.training import autocast, use_bf16


@dataclass
class Answer:
    text: str
    num_tokens: int  # generated tokens, the stop token included
    finished: bool  # stopped on an end-of-turn token rather than at max_new_tokens


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
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[Answer] = [Answer("", 0, False)] * len(texts)
    # model.generate gets no eos_token_id, so it stops on the generation config's: mark those answers finished
    stop_ids = torch.tensor(generation_eos_ids(tokenizer, model.generation_config), dtype=torch.long)
    torch.manual_seed(seed)
    sampling = temperature > 0
    with autocast(use_bf16(bf16)):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=not progress):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sampling,
                                 temperature=temperature if sampling else None, top_p=top_p if sampling else None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]  # (B, new_tokens)
            for row, i in enumerate(idx):
                ids = new[row]
                ids = ids[ids != tokenizer.pad_token_id] if tokenizer.pad_token_id not in stop_ids else ids
                hits = torch.isin(ids, stop_ids.to(ids.device)).nonzero()
                n = int(hits[0]) + 1 if len(hits) else len(ids)
                text = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
                answers[i] = Answer(text, n, bool(len(hits)))
    tokenizer.padding_side = "right"
    return answers
