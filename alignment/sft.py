"""Supervised fine-tuning (`align sft`): setup, one step, the loop, save.

Loss is the mean negative log-likelihood over assistant tokens of the whole optimizer step (all
micro-batches and all processes together), so gradient accumulation and the number of processes do
not change what is optimised: each micro-batch contributes ``sum_nll * world / tokens_in_step``
(DeepSpeed and DDP average gradients over processes, which divides by ``world`` again).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alignment import distributed as dist
from alignment.batching import pad_sequences
from alignment.config import PreferenceDataConfig, PreferredHoldoutConfig, SFTConfig
from alignment.data.chat import IGNORE_INDEX, Tokenized, check_stop_tokens, tokenize_sft
from alignment.early_stopping import EarlyStopping
from alignment.logits import labelled_logits
from alignment.modeling import apply_lora, count_parameters, load_causal_lm, load_tokenizer, save_model
from alignment.run import Run, split_state
from alignment.training import (
    Engine,
    Schedule,
    deepspeed_config,
    describe_bf16,
    set_seed,
    use_bf16,
)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SFTLoaded:
    """What preparing the SFT data did (the phase's data log line)."""

    format: str  # the training file's column layout (see alignment.data.formats)
    duplicates_removed: int
    preferred_added: int | None = None  # data.preferred: chosen answers added; None without data.preferred
    test_overlap_removed: int = 0  # data.test: train/validation conversations dropped as equal to a test one


def load_sft_records(cfg: SFTConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], SFTLoaded]:
    """Train and validation records in normalised form, plus what preparation did (for the log); the test
    records (:func:`load_sft_splits`) are left out of both."""
    train, val, _test, report = load_sft_splits(cfg)
    return train, val, report


def load_sft_splits(cfg: SFTConfig, curation_dir: Path | None = None) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], SFTLoaded]:
    """Train, validation and test records in normalised form, plus what preparation did (for the log).

    Duplicates are removed from the training file first, then each held-out part is its file (``data.validation``,
    ``data.test``) or cut out by ``data.split`` (deterministic by ``train.seed``; test: none unless the split
    has a ``test`` fraction), so no example straddles two parts. A test file's conversations are also removed
    from train and validation, and ``data.preferred`` never adds one. ``curation_dir``: where ``data.curate``
    writes its report and clusters plot (None: not written)."""
    from alignment.data import deduplicate, load_dataset_file, to_conversation
    from alignment.data.splits import carve

    ds, info = load_dataset_file(cfg.data.train, "sft")
    ds, removed = deduplicate(ds, "sft", info.variant, cfg.data.dedup)
    if cfg.data.curate is not None:  # before the split, so a near duplicate cannot land on both sides of it
        from alignment.data.curate import curate_dataset

        ds, _ = curate_dataset(ds, "sft", info.variant, cfg.data.curate, source=cfg.data.train,
                               policy_model=cfg.model, report_dir=curation_dir)
    report = SFTLoaded(info.variant, removed)
    files = tuple(name for name in ("validation", "test") if getattr(cfg.data, name))
    parts = carve(ds, cfg.data.split, cfg.train.seed, files)

    def held_out(name: str) -> list[dict[str, Any]]:
        path = getattr(cfg.data, name)
        if path:
            held_ds, held_info = load_dataset_file(path, "sft")
            return [to_conversation(r, "sft", held_info.variant) for r in held_ds]
        return [to_conversation(r, "sft", info.variant) for r in parts.get(name, [])]

    train = [to_conversation(r, "sft", info.variant) for r in parts["train"]]
    val, test = held_out("validation"), held_out("test")
    test_keys = {_conversation_key(r["messages"]) for r in test}
    if cfg.data.test:
        kept_train = [r for r in train if _conversation_key(r["messages"]) not in test_keys]
        kept_val = [r for r in val if _conversation_key(r["messages"]) not in test_keys]
        overlap = len(train) - len(kept_train) + len(val) - len(kept_val)
        train, val = kept_train, kept_val
        report = dataclasses.replace(report, test_overlap_removed=overlap)
    if cfg.data.preferred:
        from alignment.data.phase_pii import cleaned_from

        preferred = preferred_conversations(cfg.data.preferred, cfg.train.seed, cfg.data.preferred_holdout,
                                            unmasked=cleaned_from(cfg, "data.preferred"))
        # Nothing held out comes back through the preferred answers: neither a validation or test conversation
        # itself nor another answer to its prompt (that would train on the prompt validation and early stopping
        # judge, or on a test prompt).
        seen = {_conversation_key(r["messages"]) for r in train} | test_keys
        held_prompts = {_prompt_part_key(r["messages"]) for r in (*val, *test)}
        added = [r for r in preferred if _conversation_key(r["messages"]) not in seen
                 and _prompt_part_key(r["messages"]) not in held_prompts]
        train += added
        report = dataclasses.replace(report, preferred_added=len(added))
    return train, val, test, report


def _prompt_part_key(messages: list[dict[str, str]]) -> str:
    """A conversation's prompt (the turns before its final answer), compared up to whitespace as the
    preference loaders compare prompts."""
    from alignment.data.preferences import _prompt_key

    end = len(messages)
    while end and messages[end - 1].get("role") == "assistant":
        end -= 1
    return _prompt_key(messages[:end])


def _conversation_key(messages: list[dict[str, str]]) -> str:
    """The data loaders' duplicate key (equal up to whitespace)."""
    from alignment.data.dedup import record_key

    return record_key({"messages": messages}, "sft", "messages", "whitespace")


PREFERENCE_HOLDOUT = PreferenceDataConfig().split  # what the RM/DPO phases hold out unless a recipe says otherwise


def held_out_prompts(examples: list[Any], holdouts: list[PreferredHoldoutConfig], seed: int,
                     unmasked: list[Any] | None = None, masker: _Masker | None = None) -> set[str]:
    """The prompts that preference phases splitting ``examples`` as ``holdouts`` say hold out, as
    :meth:`_Masker.key` keys (masked, then compared up to whitespace): every part of their split but train, cut
    by prompt exactly as they cut it (:func:`~alignment.data.preferences.split_pairs`, the parts given as files
    not cut), and the prompts of those files. ``seed``: an entry's seed when it has none.

    A preference phase may split the file as written or a copy its own ``data.pii: mask`` wrote (SFT cannot tell
    which; each phase decides), and a masked prompt hashes to another place than the original. So each reading is
    split as written and masked, and ``unmasked`` (where ``examples`` are a copy that SFT's ``data.pii`` cleaned:
    the examples of the file it was made from) is split too, both ways; every prompt, the holdout files' too, is
    compared in its masked form (masking twice changes nothing, so a prompt and its masked copy compare equal).
    SFT leaves out exactly what the phases hold out where no prompt holds personal data; where one does, it may
    leave out a few prompts too many (one that a reading the phase did not use holds out, and every prompt that
    masks to a held-out one), never one too few."""
    from alignment.data.preferences import load_preference_examples, split_pairs

    masked = masker or _Masker()
    readings = [examples, *([unmasked] if unmasked is not None else [])]
    readings += [m for m in (masked.examples(r) for r in readings) if m is not None]  # where masking changed any
    held: set[str] = set()
    for h in holdouts:
        files = tuple(name for name in ("validation", "test") if getattr(h, name))
        for reading in readings:
            parts = split_pairs(reading, h.split, seed if h.seed is None else h.seed, files)
            held |= {masked.key(ex.prompt) for name, part in parts.items() if name != "train" for ex in part}
        for name in files:
            held |= {masked.key(ex.prompt) for ex in load_preference_examples(getattr(h, name))[0]}
    return held


class _Masker:
    """Prompts as ``data.pii: mask`` writes them (every string's personal data replaced by its kind), each distinct
    prompt scanned once."""

    def __init__(self) -> None:
        self._seen: dict[str, Any] = {}

    def prompt(self, prompt: Any) -> Any:
        from alignment.data.dedup import _map_strings
        from alignment.data.pii import find, mask_text

        raw = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        if raw not in self._seen:
            self._seen[raw] = _map_strings(prompt, lambda text: mask_text(text, find(text)))
        return self._seen[raw]

    def key(self, prompt: Any) -> str:
        """``prompt`` masked, compared up to whitespace (:func:`~alignment.data.preferences._prompt_key`): how
        :func:`held_out_prompts` compares prompts."""
        from alignment.data.preferences import _prompt_key

        return _prompt_key(self.prompt(prompt))

    def examples(self, examples: list[Any]) -> list[Any] | None:
        """``examples`` with their prompts masked; None when masking changes none of them."""
        out = [dataclasses.replace(ex, prompt=self.prompt(ex.prompt)) for ex in examples]
        return out if any(a.prompt != b.prompt for a, b in zip(out, examples, strict=True)) else None


def preferred_conversations(path: str, seed: int, holdouts: list[PreferredHoldoutConfig] | None = None,
                            unmasked: str | None = None) -> list[dict[str, Any]]:
    """Prompt + chosen answer of every training pair in a preference source, once per distinct conversation.

    Pairs whose prompt the preference phases hold out (:func:`held_out_prompts` of ``holdouts``; None: their
    default, ``PREFERENCE_HOLDOUT`` with ``seed``), compared in masked form, are skipped. ``unmasked``: the file
    ``path`` is a cleaned copy of (``data.pii``), whose split counts too."""
    from alignment.data.preferences import load_preference_examples

    examples, _ = load_preference_examples(path)
    original = load_preference_examples(unmasked)[0] if unmasked else None
    masker = _Masker()
    held = held_out_prompts(examples, holdouts or [PreferredHoldoutConfig()], seed, original, masker)
    kept = [ex for ex in examples if masker.key(ex.prompt) not in held]
    out, seen = [], set()
    for ex in kept:
        messages = [*ex.prompt, *ex.chosen]
        key = _conversation_key(messages)
        if key not in seen:
            seen.add(key)
            out.append({"messages": messages})
    return out


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit bin packing in order: each length goes to the first bin with room, else a new bin. Returns the
    indices per bin. O(n log n): a max tree over the bins' free room finds the first bin with enough room by
    descending from the root (a scan of every open bin per example was quadratic: 40k examples took 16 s).

    Ours rather than TRL's ``pack_dataset`` (best fit decreasing through an Arrow dataset): on 50k examples
    first fit decreasing with this tree fills rows as well and runs about 20x faster (benchmarks/data_prep.py)."""
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    tree = [-1] * (2 * size)  # tree[size + b]: free room of bin b (-1: not opened); inner nodes: max of children
    bins: list[list[int]] = []
    for i, n in enumerate(lengths):
        if tree[1] >= n:
            node = 1
            while node < size:  # the leftmost child with room: the first bin that fits
                node = 2 * node if tree[2 * node] >= n else 2 * node + 1
            b = node - size
            bins[b].append(i)
            room = tree[node] - n
        else:
            b = len(bins)
            bins.append([i])
            node, room = size + b, capacity - n
        tree[node] = room
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def pack(examples: list[Tokenized], max_length: int) -> list[Tokenized]:
    """Concatenate examples into rows of at most ``max_length`` tokens: first fit decreasing (longest examples
    placed first, ties in data order), which leaves less room unused than first fit in data order (99% against
    96% full on 50k conversations); the trainer shuffles rows, so their order carries nothing.

    Each packed example keeps its own positions (see :func:`collate`), which transformers reads as
    separate sequences, so no example attends to another: padding-free batching.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins = first_fit([len(examples[i].input_ids) for i in order], max_length)
    rows = [[examples[order[j]] for j in row] for row in bins]
    packed = []
    for row in rows:
        ids, labels, positions = [], [], []
        for ex in row:
            ids += ex.input_ids
            labels += [IGNORE_INDEX] + ex.labels[1:]  # never predict an example from the previous one
            positions += list(range(len(ex.input_ids)))
        packed.append(_Packed(ids, labels, False, positions))
    return packed


@dataclass
class _Packed(Tokenized):
    position_ids: list[int] | None = None


def collate(examples: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch. Packed rows carry position ids and no attention mask."""
    ids, mask = pad_sequences([ex.input_ids for ex in examples], pad_id)  # (B, T), (B, T)
    width = ids.shape[1]
    labels, _ = pad_sequences([ex.labels for ex in examples], IGNORE_INDEX, width=width)  # (B, T)
    if not isinstance(examples[0], _Packed):
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    positions = torch.zeros_like(ids)  # (B, T)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        positions[i, :n] = torch.tensor(ex.position_ids)
        positions[i, n:] = torch.arange(width - n)  # padding forms its own block
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


# --------------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------------
def token_nll(engine: Engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed next-token NLL over labelled tokens, and per-example token counts.

    The output layer runs only where a label is (not on the prompt or padding): see alignment.logits.
    """
    labels = batch.pop("labels")
    with engine.autocast():
        out = labelled_logits(engine.ds or engine.module, batch["input_ids"], labels.to(batch["input_ids"].device),
                              batch.get("attention_mask"), batch.get("position_ids"))
    nll = F.cross_entropy(out.logits.float(), out.targets, reduction="none")  # (N,)
    return out.per_row_sum(nll), out.counts()  # (B,), (B,)


def _real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens processed: padding excluded (packed rows are full but for a short tail, counted)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def train_step(engine: Engine, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One optimizer step over this process's micro-batches; the loss is the global token mean."""
    world = dist.world_size()
    local_tokens = sum(count_targets(b) for b in micro_batches)
    (global_tokens,) = dist.all_reduce_sum([float(local_tokens)])
    total_nll = 0.0
    device = dist.device()
    for batch in micro_batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        nll = token_nll(engine, batch)[0].sum()
        engine.backward(nll * world / max(global_tokens, 1.0))
        total_nll += float(nll.detach())
    lr = engine.lr()  # the rate this step applies
    grad_norm = engine.step()
    (global_nll,) = dist.all_reduce_sum([total_nll])
    return {"train/loss": global_nll / max(global_tokens, 1.0), "train/grad_norm": grad_norm,
            "train/tokens": global_tokens, "train/lr": lr}


@torch.no_grad()
def evaluate(engine: Engine, examples: list[Tokenized], batch_size: int, pad_id: int) -> float:
    """Token-mean validation loss over all processes."""
    if not examples:
        return float("nan")
    engine.eval()
    nll_sum = tokens = 0.0
    device = dist.device()
    for idx in dist.even_shard(len(examples), batch_size, [len(e.input_ids) for e in examples]):
        batch = {k: v.to(device) for k, v in collate([examples[max(i, 0)] for i in idx], pad_id).items()}
        weights = torch.tensor([float(i >= 0) for i in idx], device=device)  # (B,) 0 for padding slots
        nll, n = token_nll(engine, batch)
        nll_sum += float((weights * nll).sum())
        tokens += float((weights * n).sum())
    engine.train()
    nll_sum, tokens = dist.all_reduce_sum([nll_sum, tokens])
    return nll_sum / max(tokens, 1.0)


# --------------------------------------------------------------------------------------------------
# Setup, loop, save
# --------------------------------------------------------------------------------------------------
def run_sft(cfg: SFTConfig) -> Path:
    """Train and save; returns the model directory. Safe to re-run: resumes from the last checkpoint."""
    dist.init_process_group()
    run = Run(cfg, "sft")
    out = run.out
    set_seed(cfg.train.seed)

    # --- data -------------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.model, cfg.model_options)
    train_records, val_records, test_records, prep = load_sft_splits(cfg, out if dist.is_main() else None)
    train_examples, stats = tokenize_sft(tokenizer, train_records, cfg.data.max_length)
    val_examples, _ = tokenize_sft(tokenizer, val_records, cfg.data.max_length)
    test_examples, _ = tokenize_sft(tokenizer, test_records, cfg.data.max_length)
    # which held-out prompts were left out, said every time: a wrong assumption here trains on a test set
    holdout = (f"the prompts of {len(cfg.data.preferred_holdout)} preference-phase split(s) (data.preferred_holdout)"
               if cfg.data.preferred_holdout else f"the prompts RM/DPO hold out by default ({PREFERENCE_HOLDOUT}, seed "
               f"{cfg.train.seed}; set data.preferred_holdout if they split it otherwise)")
    preferred = (f"; {prep.preferred_added} preferred answers added from {cfg.data.preferred}, {holdout} left out"
                 if cfg.data.preferred else "")
    overlap = (f"; {prep.test_overlap_removed} train/validation examples equal to a test one removed"
               if prep.test_overlap_removed else "")
    test_note = f"; test {len(test_examples)} examples (scored once, after training)" if test_records else ""
    run.log(f"data: {prep.format} format, {prep.duplicates_removed} duplicates removed{preferred}{overlap}; "
        f"train {stats.summary(cfg.data.max_length)}; validation {len(val_examples)} examples{test_note}")
    if not train_examples:
        from alignment.errors import AlignError

        raise AlignError("no training example has an assistant token to learn from", file=cfg.data.train)
    early = EarlyStopping.create(cfg, run, len(val_examples))
    if cfg.data.packing:
        train_examples = pack(train_examples, cfg.data.max_length)
        run.log(f"packing: {stats.examples - stats.dropped_no_target} examples into {len(train_examples)} rows")

    # --- model ------------------------------------------------------------------------------
    model = load_causal_lm(cfg.model, trainable_adapter=cfg.lora.enabled, options=cfg.model_options)
    stop = check_stop_tokens(tokenizer, getattr(model, "generation_config", None))
    if not stop.ok:
        end = tokenizer.convert_ids_to_tokens(stop.end_of_turn_id) if stop.end_of_turn_id is not None else None
        run.log(f"WARNING: the chat template ends an assistant turn with {end!r} but generation stops on "
            f"{stop.eos_ids}; adding it to the saved generation_config's eos_token_id so the model stops")
        if stop.end_of_turn_id is not None:
            model.generation_config.eos_token_id = stop.eos_ids + [stop.end_of_turn_id]
    for note in stop.notes:
        run.log(f"pre-flight: {note}")
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:
            model.enable_input_require_grads()
    trainable, total = count_parameters(model)
    bf16 = use_bf16(cfg.train.bf16)

    schedule = Schedule.create(len(train_examples), cfg.train, dist.world_size(),
                               [len(e.input_ids) for e in train_examples])
    ds_config = deepspeed_config(cfg.deepspeed, cfg.train, bf16)
    engine = Engine(model, cfg.train, schedule.total_steps, bf16, ds_config)
    precision = describe_bf16(cfg.train.bf16, bf16)
    run.log(f"model {cfg.model}: {trainable:,} trainable of {total:,} parameters; {precision}; "
        f"processes={dist.world_size()}; deepspeed={cfg.deepspeed or 'off'}; steps={schedule.total_steps}")

    split = split_state(cfg, (_conversation_key(r["messages"]) for r in test_records))
    start_step = run.start(engine, schedule.total_steps, early_stopping=early, split=split)["step"]

    def validation_loss() -> dict[str, float]:
        return {"eval/loss": evaluate(engine, val_examples, cfg.train.batch_size, tokenizer.pad_token_id)}

    # --- loop -------------------------------------------------------------------------------
    engine.train()
    window_tokens, window_start = 0.0, time.perf_counter()
    for step in run.steps(start_step):
        done = step + 1
        batches = [collate([train_examples[i] for i in idx], tokenizer.pad_token_id)
                   for idx in schedule.micro_batches(step, dist.rank())]
        with run.step(done, engine, batches):
            metrics = train_step(engine, batches)
        window_tokens += sum(_real_tokens(b) for b in batches) * dist.world_size()
        if not math.isfinite(metrics["train/loss"]):
            raise FloatingPointError(f"loss became {metrics['train/loss']} at step {done}; lower train.lr")
        if run.log_due(done):
            elapsed = time.perf_counter() - window_start
            metrics.update({"train/epoch": schedule.epoch_of(done),
                            "perf/tokens_per_second": window_tokens / max(elapsed, 1e-9)})
            run.metrics(metrics, done)
            window_tokens, window_start = 0.0, time.perf_counter()
        if run.eval_due(done):
            run.metrics(held_out := validation_loss(), done)
            if early is not None and early.update(engine, held_out, done):
                break
        if run.save_due(done):
            run.checkpoint(engine, done)

    # --- save -------------------------------------------------------------------------------
    # the model saved: with early stopping the best one evaluated, put back in place
    final = early.conclude(engine, validation_loss, schedule.total_steps) if early else validation_loss()
    end_step = early.end_step(schedule.total_steps) if early else schedule.total_steps
    run.metrics(final, end_step)
    # the test set, scored once with the model about to be saved (never seen by training or early stopping)
    test = run.record_test({"eval/loss": evaluate(engine, test_examples, cfg.train.batch_size,
                                                           tokenizer.pad_token_id)} if test_examples else {},
                               len(test_examples), end_step)
    tested = f"; test loss {test['test/loss']:.4f} on {len(test_examples)} examples" if test else ""
    with engine.gathered():
        if run.main:
            save_model(engine.module, tokenizer, out / "model",
                       out / "merged" if cfg.lora.enabled and cfg.lora.save_merged else None, cfg.model_options)
            run.log(f"saved {out / 'model'}; validation loss {final['eval/loss']:.4f}{tested}")
    run.close()
    return out / "model"
