"""Chat templating with loss on assistant tokens only, counted truncation, and stop-token pre-flight.

Why offsets instead of ``return_assistant_tokens_mask``: that transformers option needs a
``{% generation %}`` marker in the template, which most released templates (SmolLM2's included) lack.
We render the whole conversation once, find each assistant turn's character span by rendering the
prefix with and without that turn, and label the tokens whose characters fall inside a span. This
works for any template whose rendering of a prefix is a prefix of the full rendering (we check it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignment.errors import AlignError

IGNORE_INDEX = -100


@dataclass
class Tokenized:
    """One training example."""

    input_ids: list[int]  # (T,)
    labels: list[int]  # (T,) token id where the loss applies, IGNORE_INDEX elsewhere
    truncated: bool = False


@dataclass
class TokenizeStats:
    """What tokenization did to a dataset; reported, never silent."""

    examples: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    target_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self, max_length: int) -> str:
        parts = [f"{self.examples} examples, {self.target_tokens} target tokens"]
        if self.truncated:
            pct = 100.0 * self.truncated / max(self.examples, 1)
            parts.append(f"{self.truncated} truncated to max_length={max_length} ({pct:.1f}%)")
        if self.dropped_no_target:
            parts.append(f"{self.dropped_no_target} dropped (no assistant token left after truncation)")
        return "; ".join(parts)


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template as text."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text and the character span of every assistant turn, its end-of-turn tokens included."""
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_text = render(tokenizer, messages[:i], add_generation_prompt=True)
        end_text = render(tokenizer, messages[: i + 1])
        if not text.startswith(start_text) or not text.startswith(end_text):
            raise AlignError(
                "the tokenizer's chat template renders a conversation prefix differently from the whole "
                "conversation, so assistant tokens cannot be located; use a standard chat template"
            )
        spans.append((len(start_text), len(end_text)))
    return text, spans


def _labelled(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]],
              max_length: int) -> Tokenized:
    """Labels for the tokens whose first character falls inside an assistant span, then truncation."""
    labels = [IGNORE_INDEX] * len(ids)
    span_i = 0
    for t, (start, _end) in enumerate(offsets):
        while span_i < len(spans) and start >= spans[span_i][1]:
            span_i += 1
        if span_i < len(spans) and spans[span_i][0] <= start < spans[span_i][1]:
            labels[t] = ids[t]
    truncated = len(ids) > max_length
    return Tokenized(ids[:max_length], labels[:max_length], truncated)


def _plain(tokenizer: Any, ids: list[int], max_length: int) -> Tokenized:
    """Plain text: loss on every token, EOS appended so the model learns to stop."""
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    truncated = len(ids) > max_length
    ids = ids[:max_length]
    return Tokenized(ids, list(ids), truncated)


def tokenize_messages(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> Tokenized:
    """Token ids and labels for a conversation: loss on assistant turns (with their end token) only."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return _labelled(enc["input_ids"], enc["offset_mapping"], spans, max_length)


def tokenize_text(tokenizer: Any, text: str, max_length: int) -> Tokenized:
    """Plain text: loss on every token, EOS appended so the model learns to stop."""
    return _plain(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"], max_length)


# Records tokenized per call of the (fast, Rust) tokenizer: one call encodes a whole chunk on all cores instead
# of one Python round trip per example (measured by benchmarks/data_prep.py); chunks bound the memory of the
# offsets held at once.
TOKENIZE_CHUNK = 2048


def tokenize_sft(
    tokenizer: Any, records: list[dict[str, Any]], max_length: int
) -> tuple[list[Tokenized], TokenizeStats]:
    """Tokenize normalised SFT records (``{"messages": ...}`` or ``{"text": ...}``); the same examples as
    :func:`tokenize_messages` / :func:`tokenize_text` one by one, encoded a chunk at a time."""
    stats = TokenizeStats()
    out: list[Tokenized] = []
    for start in range(0, len(records), TOKENIZE_CHUNK):
        chunk = records[start:start + TOKENIZE_CHUNK]
        rendered = [assistant_spans(tokenizer, r["messages"]) if "messages" in r else (r["text"], None)
                    for r in chunk]
        enc = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        for (_, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
            example = _plain(tokenizer, ids, max_length) if spans is None else _labelled(ids, offsets, spans,
                                                                                         max_length)
            stats.examples += 1
            stats.truncated += int(example.truncated)
            targets = sum(1 for label in example.labels if label != IGNORE_INDEX)
            if targets == 0:
                stats.dropped_no_target += 1
                continue
            stats.target_tokens += targets
            stats.lengths.append(len(example.input_ids))
            out.append(example)
    return out, stats


# --------------------------------------------------------------------------------------------------
# Pre-flight: will the trained model stop?
# --------------------------------------------------------------------------------------------------
@dataclass
class StopCheck:
    """Outcome of the stop-token pre-flight."""

    end_of_turn_id: int | None  # first token after the assistant's content in the template
    eos_ids: list[int]  # what generation stops on
    pad_is_eos: bool
    notes: list[str]

    @property
    def ok(self) -> bool:
        return self.end_of_turn_id is not None and self.end_of_turn_id in self.eos_ids


def generation_eos_ids(tokenizer: Any, generation_config: Any | None) -> list[int]:
    """The token ids that end an answer: the generation config's ``eos_token_id`` (one id or a list), else
    the tokenizer's EOS; [] when neither names one.

    Resolved here only, so the SFT pre-flight, ``generate`` (evaluation, the feedback app) and PPO (which
    also stops on the tokenizer's EOS) agree on when an answer ends.
    """
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


def check_stop_tokens(tokenizer: Any, generation_config: Any | None = None) -> StopCheck:
    """Check that the template ends an assistant turn with a token generation stops on.

    A model fine-tuned on turns that end with a token generation does not stop on keeps talking
    until ``max_new_tokens``: the failure users of SFT report most often. We also report pad == EOS,
    which is harmless here because labels come from the assistant mask, not from the pad id.
    """
    marker = "Sure, here is the answer."
    messages = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": marker}]
    notes: list[str] = []
    end_id = None
    if getattr(tokenizer, "chat_template", None):
        text = render(tokenizer, messages)
        cut = text.find(marker)
        if cut >= 0:
            tail = text[cut + len(marker):]
            tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
            end_id = tail_ids[0] if tail_ids else None
        else:
            notes.append("the chat template does not render assistant content verbatim")
    else:
        end_id = tokenizer.eos_token_id
        notes.append("no chat template: plain text examples end with the EOS token")
    eos_ids = generation_eos_ids(tokenizer, generation_config)
    pad_is_eos = tokenizer.pad_token_id is None or tokenizer.pad_token_id in eos_ids
    if pad_is_eos:
        notes.append("pad token equals EOS (or is unset): handled, labels come from the assistant mask")
    return StopCheck(end_id, eos_ids, pad_is_eos, notes)
