"""Pipeline recipes: phases in order, each consuming the previous outputs, skipped when complete.

A phase is complete when its folder holds ``complete.json`` with the fingerprint of the resolved
config it ran, of the content of the data it read (files by their bytes; a feedback store is first exported
into the phase's folder, :func:`export_feedback_stores`, and that file counts), and of the phases it
consumed. Re-running a pipeline skips complete phases and re-runs, saying
why, those whose recipe or data changed (and every phase after them); a phase killed half-way has no
marker, runs again, and its trainer resumes from the last checkpoint, unless that checkpoint was written under
another fingerprint (``started.json``: an earlier phase retrained into the same folder, or new data), which
would continue from weights the phase no longer starts from, or records none; then it starts afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignment import distributed
from alignment.config import (
    PREFERENCE_SPLIT,
    ModelOptions,
    _Source,
    build,
    load_config,
    load_yaml,
    parse_overrides,
    save_config,
    to_dict,
)
from alignment.data.fingerprint import config_sources, data_fingerprint
from alignment.data.phase_pii import scan_phase_data
from alignment.errors import AlignError
from alignment.evaluation.run import model_stamp
from alignment.files import atomic_write
from alignment.log import get_logger
from alignment.phases import PHASES
from alignment.training import clear_checkpoints
from alignment.verdict import format_verdicts, run_verdicts

_log = get_logger("pipeline")

# The packaged copy when installed from a wheel: `align quickstart` works from any folder (its runs/ go under
# the working directory; the recipe's data paths resolve next to the recipe file).
QUICKSTART = distributed.packaged_dir("recipes") / "quickstart" / "pipeline.yaml"
TRAINING_PHASES = tuple(PHASES)
POLICY_PHASES = ("sft", "dpo", "ppo")  # phases whose output is a policy: the next phase starts from it


@dataclass
class PhaseStep:
    """One phase of a pipeline."""

    name: str
    """Folder under the pipeline's output_dir; later phases refer to its model as "@<name>"."""
    kind: Literal["sft", "rm", "dpo", "ppo", "eval"]
    recipe: str | None = None
    """The phase recipe, relative to the pipeline file (training phases)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted keys set on top of the phase recipe, e.g. {"train.max_steps": 20}; "@<phase>" in `model`,
    `ref_model` or `reward_model` names an earlier phase's output."""


@dataclass
class EvaluationConfig:
    """Policy adherence and reward-model scores on held-out prompts (the `eval` phase)."""

    prompts: str = ""
    policies: str = ""
    max_new_tokens: int = 128
    batch_size: int = 16
    reward_model: str | None = "auto"
    """Judges every model's answers: mean score, and against "base" the win rate (ties count half) and the
    mean P(better) = sigmoid(r - r_base), with the score-length correlation beside them. "auto": the model
    of the last `rm` phase before the eval phase (none if there is none); "@<phase>": that `rm` phase's
    model; a path: a reward model from `align rm`; null or "none": no reward-model judging."""
    head_to_head: str | None = None
    """A feedback store's head-to-head project (`feedback.db#project`, or a database URL with `#project`): the
    report shows the experts' blind votes of the challenger against the baseline there (win rate with its
    intervals, the rules of `policies` and the reward-model scores as judges, their agreement with the
    experts), read from the store each time the report is written. null: no such section."""
    model_options: ModelOptions | None = None
    """How the eval phase loads every model it generates or judges with (dtype, attn_implementation,
    trust_remote_code); null: the last training phase's `model_options` (a model that needed remote code to
    train needs it to answer too)."""


@dataclass
class PipelineConfig:
    """Phases run in order; each training phase starts from the latest policy (SFT, DPO) before it."""

    name: str = "pipeline"
    output_dir: str = "runs/pipeline"
    model: str = "smollm2-135m-instruct"
    """The base model: the first training phase starts from it, and `eval` reports it as "base"."""
    deepspeed: str | None = None
    num_processes: int = 1
    phases: list[PhaseStep] = field(default_factory=list)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        names = [p.name for p in self.phases]
        if not names:
            raise AlignError("a pipeline needs at least one phase", field="phases")
        for i, p in enumerate(self.phases):
            if names.count(p.name) > 1:
                raise AlignError(f"phase name '{p.name}' is used twice", field=f"phases[{i}].name")
            if p.kind in TRAINING_PHASES and not p.recipe:
                raise AlignError("a training phase needs a recipe file", field=f"phases[{i}].recipe")
            if p.kind == "eval" and not (self.evaluation.prompts and self.evaluation.policies):
                raise AlignError("an eval phase needs evaluation.prompts and evaluation.policies",
                                 field="evaluation")
        h2h = self.evaluation.head_to_head
        if h2h is not None and (h2h.count("#") != 1 or not h2h.split("#")[0] or not h2h.split("#")[1]):
            raise AlignError(f"name a store and its head-to-head project as STORE#PROJECT, not '{h2h}'",
                             field="evaluation.head_to_head")
        rm = self.evaluation.reward_model
        if rm is not None and rm.strip().lower() in ("none", ""):
            self.evaluation.reward_model = None
        elif rm is not None and rm.startswith("@"):
            kinds = {p.name: p.kind for p in self.phases}
            if kinds.get(rm[1:]) != "rm":
                rms = [p.name for p in self.phases if p.kind == "rm"]
                raise AlignError(f"'{rm}' names no `rm` phase of this pipeline (rm phases: "
                                 f"{', '.join(rms) or 'none'})", field="evaluation.reward_model")
            first_eval = next((i for i, p in enumerate(self.phases) if p.kind == "eval"), len(self.phases))
            if names.index(rm[1:]) > first_eval:
                raise AlignError(f"'{rm}' runs after the eval phase; list it before", field="evaluation.reward_model")


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_complete(phase_dir: Path, fingerprint: str, data: dict[str, str] | None = None,
                 sources: dict[str, str] | None = None) -> bool:
    """Whether the phase completed with this fingerprint; when it completed with another because its data
    changed (``data``: hash per field, ``sources``: the paths), say which data, so a re-run is not a mystery."""
    marker = phase_dir / "complete.json"
    if not marker.exists():
        return False
    done = json.loads(marker.read_text())
    if done.get("fingerprint") == fingerprint:
        return True
    before = done.get("data") or {}
    changed = [name for name, digest in (data or {}).items() if name in before and before[name] != digest]
    if changed:
        _log.info(f"[pipeline] {phase_dir.name}: its data changed since it completed ("
                  + ", ".join(f"{name}: {(sources or {}).get(name, '?')}" for name in changed) + "); running it again")
    return False


def _mark_complete(phase_dir: Path, fingerprint: str, seconds: float, data: dict[str, str] | None = None) -> None:
    phase_dir.mkdir(parents=True, exist_ok=True)
    (phase_dir / "complete.json").write_text(json.dumps({"fingerprint": fingerprint, "seconds": seconds,
                                                         "data": data or {}}))


def _resolve_reference(value: str, outputs: dict[str, str]) -> str:
    if isinstance(value, str) and value.startswith("@"):
        if value[1:] not in outputs:
            raise AlignError(f"'{value}' refers to no earlier training phase ({', '.join(outputs) or 'none'})",
                             field="model")
        return outputs[value[1:]]
    return value


def load_pipeline(path: str | Path, overrides: list[str]) -> PipelineConfig:
    from alignment.config import apply_overrides

    data, lines = load_yaml(path)
    parsed = parse_overrides(overrides)
    data = apply_overrides(data, parsed)
    cfg = build(PipelineConfig, data, _Source(str(path), lines, set(parsed)))
    base = Path(path).parent
    for key in ("prompts", "policies", "reward_model"):
        value = getattr(cfg.evaluation, key)
        if value and value != "auto" and not value.startswith("@") and not Path(value).is_absolute() \
                and (base / value).exists():
            setattr(cfg.evaluation, key, str(base / value))
    h2h = cfg.evaluation.head_to_head
    if h2h and "://" not in h2h:
        store, project = h2h.split("#")
        if not Path(store).is_absolute():  # a store file, like the other paths: relative to the recipe
            cfg.evaluation.head_to_head = f"{base / store}#{project}"
    for step in cfg.phases:
        if step.recipe and not Path(step.recipe).is_absolute():
            step.recipe = str(base / step.recipe)
    return cfg


# Where a phase takes a feedback store as data, the store's preference pairs are what it reads: RM and DPO
# (data.kind auto or feedback) in data.train, data.validation and data.test, SFT in data.preferred.
STORE_FIELDS = {"rm": ("data.train", "data.validation", "data.test"),
                "dpo": ("data.train", "data.validation", "data.test"),
                "sft": ("data.preferred",)}


def export_feedback_stores(kind: str, cfg: Any) -> dict[str, Any]:
    """Export every feedback store a phase config names as data to ``<output_dir>/data/<field>.jsonl`` (with
    ``<field>.provenance.json`` beside it) and return the overrides that point the phase at those files.

    The training library reads files and never imports the feedback app: this layer (the pipeline, and
    `align rm|dpo|sft` through it, in the launcher process) turns the app's store into the library's input.
    The files hold exactly the pairs the store exports (:func:`feedback_app.export.materialise`), kept beside
    the model they trained. A store's pairs were never de-duplicated, so when every preference source of an
    RM or DPO phase is a store, ``data.dedup`` is set to none; ``data.kind: feedback`` becomes preference.
    """
    fields = STORE_FIELDS.get(kind, ())
    if kind in ("rm", "dpo") and cfg.data.kind not in ("auto", "feedback"):
        return {}
    sources = config_sources(cfg, fields)
    if kind == "sft" and (holdout := _export_holdout_stores(cfg)):
        return {**(_export_stores(kind, cfg, sources) if sources else {}), **holdout}
    if not sources:
        return {}
    return _export_stores(kind, cfg, sources)


def _export_stores(kind: str, cfg: Any, sources: dict[str, str]) -> dict[str, Any]:
    """:func:`export_feedback_stores` of the data ``sources`` (field: spec) that are feedback stores."""
    from feedback_app.export import aggregation_line, is_store_spec, materialise

    stores = {name: spec for name, spec in sources.items() if is_store_spec(spec)}
    if not stores:
        return {}
    folder = Path(cfg.output_dir).resolve() / "data"
    pair_policy = cfg.data.pair_policy if kind in ("rm", "dpo") else "all"
    # SFT's data.preferred merges annotators too (its own default, majority: SFTDataConfig.aggregate), so that
    # a pair two annotators ordered both ways does not put both answers into SFT as "preferred".
    aggregate = cfg.data.aggregate
    overrides: dict[str, Any] = {}
    for name, spec in stores.items():
        out = folder / f"{name.rsplit('.', 1)[-1]}.jsonl"
        info = materialise(spec, out, pair_policy, aggregate)
        overrides[name] = str(out)
        if distributed.is_main():
            _log.info(f"[{kind}] {name}: feedback store {info['source']} -> {out} ({info['pairs']} pairs from "
                      f"{info['judgments']} judgments, exported {info['exported_at']})")
            if aggregate != "all":
                _log.info(f"[{kind}] {name}: {aggregation_line(aggregate, info['aggregation'])}")
    if kind in ("rm", "dpo"):
        if cfg.data.kind == "feedback":
            overrides["data.kind"] = "preference"
        if stores.keys() == sources.keys():
            overrides["data.dedup"] = "none"
    return overrides


def holdout_sources(cfg: Any) -> dict[str, str]:
    """``{field: path}`` of the files an SFT recipe's ``data.preferred_holdout`` names (their prompts are left
    out of ``data.preferred``): read by the phase, so part of its data."""
    holdouts = getattr(getattr(cfg, "data", None), "preferred_holdout", None) or []
    return {f"data.preferred_holdout[{i}].{name}": getattr(h, name) for i, h in enumerate(holdouts)
            for name in ("validation", "test") if getattr(h, name)}


def _export_holdout_stores(cfg: Any) -> dict[str, Any]:
    """A feedback store as a ``data.preferred_holdout`` file (an RM/DPO phase's ``data.test`` or ``validation``)
    exported to ``<output_dir>/data/preferred_holdout<i>_<field>.jsonl``, as the phases export their data; only
    its prompts matter, so all pairs of every annotator. The override that points the entries at the files, or
    {} when none names a store."""
    found = holdout_sources(cfg)
    if not found:
        return {}
    from feedback_app.export import is_store_spec, materialise

    stores = {name: spec for name, spec in found.items() if is_store_spec(spec)}
    if not stores:
        return {}
    entries = [to_dict(h) for h in cfg.data.preferred_holdout]
    folder = Path(cfg.output_dir).resolve() / "data"
    for name, spec in stores.items():
        index, key = name.removeprefix("data.preferred_holdout[").split("].")
        out = folder / f"preferred_holdout{index}_{key}.jsonl"
        info = materialise(spec, out, "all", "all")
        entries[int(index)][key] = str(out)
        if distributed.is_main():
            _log.info(f"[sft] {name}: feedback store {info['source']} -> {out} ({info['pairs']} pairs; their prompts "
                      "are left out of data.preferred)")
    return {"data.preferred_holdout": entries}


def _same_source(a: str | None, b: str | None) -> bool:
    """Whether two data specs name the same file, folder or feedback store."""
    if not a or not b:
        return False
    if a == b:
        return True
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def preferred_holdout(cfg: PipelineConfig, sft_cfg: Any) -> list[dict[str, Any]] | None:
    """What an SFT phase of pipeline ``cfg`` (``sft_cfg``, its config as written) must leave out of its
    ``data.preferred``: one ``data.preferred_holdout`` entry per way the pipeline's RM and DPO phases hold out
    prompts of that file (its split, seed, validation and test files, where a phase trains on it; its
    validation and test files, where it trains on another), added to the entries the recipe wrote (the union:
    SFT never trains on a prompt any of them holds out). None: leave the recipe as it is (no data.preferred,
    no such phase, or exactly the default entry, so a pipeline's fingerprint stays what it was)."""
    preferred = getattr(sft_cfg.data, "preferred", None)
    if not preferred:
        return None
    derived: list[dict[str, Any]] = []
    for step in cfg.phases:
        if step.kind not in ("rm", "dpo"):
            continue
        # only its data and seed are needed: the model references (@phase) are not resolved yet
        overrides = {k: v for k, v in step.overrides.items() if k not in ("model", "ref_model", "reward_model")}
        phase = load_config(PHASES[step.kind].config, step.recipe, overrides)
        data, seed = phase.data, phase.train.seed
        if _same_source(data.train, preferred):
            entry = {"split": dict(data.split), "seed": seed, "validation": data.validation, "test": data.test}
        elif data.validation or data.test:
            entry = {"split": {"train": 1.0}, "seed": seed, "validation": data.validation, "test": data.test}
        else:
            continue
        if entry not in derived:
            derived.append(entry)
    written = [to_dict(h) for h in sft_cfg.data.preferred_holdout or []]
    default = {"split": dict(PREFERENCE_SPLIT), "seed": sft_cfg.train.seed, "validation": None, "test": None}
    if not derived or (not written and derived == [default]):
        return None
    return written + [entry for entry in derived if entry not in written]


def record_lineage(kind: str, cfg: Any, model_dir: str | Path | None = None) -> Path | None:
    """After a training phase, in the process that trained it (the main rank): ``<output_dir>/lineage.json``
    naming the trained weights (their hash) and the feedback-store snapshots they were trained on, read from the
    ``.provenance.json`` beside each data file the phase read (:func:`feedback_app.export.write_lineage`; a PPO
    phase adds its reward model's lineage). The app's ``align feedback lineage`` follows a round of candidates
    back to those judgments through it.

    The model is trained and saved by then: a lineage that cannot be written is a warning, never a failed
    phase (a pipeline would train it again). Returns the file, or None."""
    if not distributed.is_main():
        return None
    from feedback_app.export import LINEAGE_FILE, write_lineage

    out = Path(cfg.output_dir)
    model = Path(model_dir) if model_dir else out / "model"
    from alignment.model_card import write_model_card

    write_model_card(kind, cfg, model)
    reward_model = getattr(cfg, "reward_model", None) if kind == "ppo" else None
    try:
        return write_lineage(out, model, config_sources(cfg), phase=kind, reward_model=reward_model)
    except (AlignError, OSError) as e:
        # One from an earlier training of this folder would describe the weights this run replaced.
        (out / LINEAGE_FILE).unlink(missing_ok=True)
        _log.warning(f"[{kind}] warning: lineage.json not written ({e}); the model is saved, but which judgments it "
                     "was trained on is not recorded beside it")
        return None


def load_phase_config(kind: str, recipe: str | None, overrides: list[str] | dict[str, Any]) -> tuple[
        Any, Any, dict[str, Any]]:
    """A phase's config as written, and as it trains: when its data names feedback stores, they are exported
    (:func:`export_feedback_stores`) and the config is loaded again pointed at the exported files; then its data
    is scanned for personal data (``data.pii``, :func:`~alignment.data.phase_pii.scan_phase_data`), and a masked
    or filtered copy replaces a file that had some. Returns (as written, to train with, the overrides the export
    and the scan added: empty when neither changed a path)."""
    written = load_config(PHASES[kind].config, recipe, overrides)
    exported = export_feedback_stores(kind, written)
    given = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides)
    cfg = load_config(PHASES[kind].config, recipe, {**given, **exported}) if exported else written
    # after the export, so a store's pairs are scanned as the file the phase reads
    cleaned = scan_phase_data(kind, cfg)
    if cleaned:
        exported = {**exported, **cleaned}
        cfg = load_config(PHASES[kind].config, recipe, {**given, **exported})
    return written, cfg, exported


def run_recipe(path: str, overrides: list[str]) -> int:
    """`align run`: a pipeline (has `phases`) or a single phase recipe (has `phase: <kind>`)."""
    data, _ = load_yaml(path)
    if "phases" in data:
        run_pipeline(load_pipeline(path, overrides))
        return 0
    kind = data.get("phase")
    if kind not in PHASES:
        raise AlignError(f"a recipe for `align run` needs 'phases' (a pipeline) or 'phase: "
                         f"{'|'.join(PHASES)}'", file=path, field="phase")
    _, cfg, _ = load_phase_config(kind, path, overrides)
    _run_training_phase(kind, cfg, deepspeed=cfg.deepspeed, num_processes=1)
    return 0


def _run_training_phase(kind: str, cfg: Any, deepspeed: str | None, num_processes: int) -> None:
    if deepspeed or num_processes > 1:
        launch_file = Path(cfg.output_dir) / "launch.yaml"
        save_config(cfg, launch_file)
        argv = [kind, "--config", str(launch_file), "--num-processes", str(num_processes)]
        if deepspeed:
            argv += ["--deepspeed", deepspeed]
        code = distributed.launch(argv, num_processes, None)
        if code != 0:
            raise AlignError(f"phase '{kind}' failed on {num_processes} processes (exit {code}); "
                             "re-run to resume from its last checkpoint")
        return
    record_lineage(kind, cfg, PHASES[kind].run(cfg))


def run_pipeline(cfg: PipelineConfig) -> dict[str, float]:
    """Run every phase not yet complete; returns wall seconds per phase (0 for skipped ones)."""
    out = Path(cfg.output_dir)
    rm = cfg.evaluation.reward_model
    if rm and rm != "auto" and not rm.startswith("@") and any(p.kind == "eval" for p in cfg.phases) \
            and not Path(rm).resolve().is_relative_to(out.resolve()):
        _check_reward_model(rm)  # a typo fails now, not after the training phases
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "pipeline.yaml")
    from alignment.allocator import describe

    _log.info(f"[pipeline] memory allocator: {describe()}")
    outputs: dict[str, str] = {}  # training phase name -> its model folder
    policies: dict[str, str] = {}  # the subset that generates text (not reward models)
    policy_cfgs: dict[str, tuple[str, Any]] = {}  # their (kind, config), for the model cards
    fingerprints: list[str] = []
    timings: dict[str, float] = {}
    current_model = cfg.model
    reward_models: list[str] = []  # names of the `rm` phases so far, for evaluation.reward_model: auto
    tracking = None  # the last training phase's tracking section: where the eval tables and report go
    trained_options = None  # the last training phase's model_options: how the eval phase loads, unless it says
    for step in cfg.phases:
        phase_dir = out / step.name
        start = time.perf_counter()
        if step.kind in PHASES:
            phase_overrides = {"model": current_model, **step.overrides, "output_dir": str(phase_dir)}
            for key in ("model", "ref_model", "reward_model"):
                if key in phase_overrides:
                    phase_overrides[key] = _resolve_reference(phase_overrides[key], outputs)
            if step.kind == "sft":
                # SFT's preferred answers leave out whatever this pipeline's RM/DPO phases hold out of that file
                holdout = preferred_holdout(cfg, load_config(PHASES["sft"].config, step.recipe, phase_overrides))
                if holdout is not None:
                    phase_overrides["data.preferred_holdout"] = holdout
            written, phase_cfg, _ = load_phase_config(step.kind, step.recipe, phase_overrides)
            tracking = phase_cfg.tracking
            trained_options = phase_cfg.model_options
            recipe = comparable(to_dict(written))  # as written: a store stays a store, its pairs are in `data`
            recipe.pop("tracking", None)  # where metrics go does not change the model: no retraining for it
            sources = {**config_sources(written), **holdout_sources(written)}
            data = data_fingerprint({**config_sources(phase_cfg), **holdout_sources(phase_cfg)})
            fingerprint = _fingerprint([fingerprints, recipe, cfg.deepspeed, cfg.num_processes, data])
            if _is_complete(phase_dir, fingerprint, data, sources):
                _log.info(f"[pipeline] {step.name}: complete, skipped")
                timings[step.name] = 0.0
            else:
                _warn_if_changed(phase_dir, phase_cfg)
                _fresh_if_started_elsewhere(phase_dir, phase_cfg, _fingerprint(
                    [fingerprints, _without_resume(recipe), cfg.deepspeed, cfg.num_processes, data]))
                _log.info(f"[pipeline] {step.name}: {step.kind} from {phase_cfg.model}")
                _run_training_phase(step.kind, phase_cfg, cfg.deepspeed, cfg.num_processes)
                timings[step.name] = time.perf_counter() - start
                _mark_complete(phase_dir, fingerprint, timings[step.name], data)
            outputs[step.name] = str(phase_dir / "model")
            if step.kind in POLICY_PHASES:
                current_model = outputs[step.name]
                policies[step.name] = outputs[step.name]
                policy_cfgs[step.name] = (step.kind, phase_cfg)
            if step.kind == "rm":
                reward_models.append(step.name)
        else:
            models = {"base": cfg.model, **policies}
            reward_model = _eval_reward_model(cfg.evaluation.reward_model, outputs, reward_models)
            sources = config_sources(cfg.evaluation, ("prompts", "policies"))
            data = data_fingerprint(sources)
            options = cfg.evaluation.model_options or _inherited(trained_options)
            fingerprint = _fingerprint([fingerprints, _generation_settings(cfg.evaluation), models, reward_model,
                                        model_stamp(reward_model) if reward_model else None, data,
                                        *([to_dict(options)] if options and options != ModelOptions() else [])])
            if _is_complete(phase_dir, fingerprint, data, sources):
                _log.info(f"[pipeline] {step.name}: complete, skipped")
                timings[step.name] = 0.0
            else:
                _run_eval_phase(cfg, phase_dir, models, reward_model, options)
                timings[step.name] = time.perf_counter() - start
                _mark_complete(phase_dir, fingerprint, timings[step.name], data)
                _cards_with_evaluation(policy_cfgs, phase_dir)
        fingerprints.append(fingerprint)
    report = _finish(out, cfg, timings)
    if distributed.is_main():
        from alignment.tracking import log_pipeline

        log_pipeline(out, cfg, tracking, report)
    return timings


def _cards_with_evaluation(policy_cfgs: dict[str, tuple[str, Any]], eval_dir: Path) -> None:
    """Each policy phase's model card again, now with the eval phase's adherence table."""
    from alignment.model_card import write_model_card

    table = eval_dir / "table.txt"
    if not distributed.is_main() or not table.exists():
        return
    for kind, phase_cfg in policy_cfgs.values():
        write_model_card(kind, phase_cfg, Path(phase_cfg.output_dir) / "model", evaluation=table.read_text())


def head_to_head_lines(cfg: Any) -> list[str]:
    """The experts' head-to-head report of ``cfg.evaluation.head_to_head`` (a store's head-to-head project) as
    text lines, the rules of ``cfg.evaluation.policies`` judging beside them; [] when the recipe names none. A
    store or project that cannot be read gives one line saying why: the report is still written."""
    spec = getattr(getattr(cfg, "evaluation", None), "head_to_head", None)
    if not spec:
        return []
    # The feedback app's store and statistics, imported here: only a recipe that names a store needs them.
    from alignment.errors import AlignError
    from alignment.evaluation.rules import load_rules
    from feedback_app.headtohead import format_summary, project_summary
    from feedback_app.store import Store, StoreError, is_store

    store_spec, project_name = spec.rsplit("#", 1)
    if "://" not in store_spec and not is_store(store_spec):
        return [f"head-to-head: no feedback store at {store_spec}"]
    try:
        store = Store(store_spec, create=False)
        try:
            project = store.project(project_name)
            if project is None:
                return [f"head-to-head: the store has no project '{project_name}'"]
            policies_file = cfg.evaluation.policies
            policies = load_rules(policies_file) if policies_file else None
            summary = project_summary(store, project, policies=policies, policies_name=Path(policies_file).name
                                      if policies_file else "")
        finally:
            store.close()
    except (StoreError, AlignError) as err:
        return [f"head-to-head: {err}"]
    return format_summary(summary)


def _finish(out: Path, cfg: PipelineConfig, timings: dict[str, float]) -> Path:
    """Verdicts (stored with the eval results), the report, then the closing lines: verdicts, times, report."""
    from alignment.report import (
        data_prep_lines,
        data_prep_rows,
        early_stopping_lines,
        early_stopping_rows,
        split_test_lines,
        split_test_rows,
        write_report,
    )

    verdicts = _learning_verdicts(out, cfg)
    h2h = head_to_head_lines(cfg)
    report = write_report(out, cfg, timings, verdicts, h2h)
    if verdicts:
        _log.info("\n" + "\n".join(f"[pipeline] {line}" for line in format_verdicts(verdicts).splitlines()))
    for line in (data_prep_lines(data_prep_rows(out, cfg)) + split_test_lines(split_test_rows(out, cfg))
                 + early_stopping_lines(early_stopping_rows(out, cfg))):
        _log.info(f"[pipeline] {line}")
    if h2h:
        _log.info("\n" + "\n".join(f"[pipeline] {line}" for line in h2h))
    for name, seconds in timings.items():
        _log.info(f"[pipeline] {name}: {seconds:.0f} s" + (" (skipped: already complete)" if seconds == 0 else ""))
    _log.info(f"[pipeline] total: {sum(timings.values()):.0f} s")
    _log.info(f"[pipeline] report: {report}")
    return report


def _learning_verdicts(out: Path, cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Did each policy phase beat its start model? Stored in the eval results it was judged from."""
    verdicts, results_file = run_verdicts(out, cfg)
    if results_file is not None:
        # rewritten on every run, so the verdicts follow the current diagnostics even when eval was skipped
        from alignment.evaluation.records import EvalReport

        report = EvalReport.read(results_file)
        report.verdicts = verdicts
        report.write(results_file)
    return verdicts


def _without_resume(recipe: dict[str, Any]) -> dict[str, Any]:
    """A phase recipe (as a dict) without ``train.resume``: how a run was told to resume (a fresh start writes
    "never") is not what it learned."""
    return comparable({**recipe, "train": {k: v for k, v in (recipe.get("train") or {}).items() if k != "resume"}})


def _warn_if_changed(phase_dir: Path, phase_cfg: Any) -> None:
    """Checkpoints written under another config must not be resumed as if nothing changed."""
    previous = phase_dir / "config.yaml"
    if not previous.exists() or not (phase_dir / "checkpoints").exists():
        return
    import yaml

    old = yaml.safe_load(previous.read_text())
    if _without_resume(old) != _without_resume(json.loads(json.dumps(to_dict(phase_cfg)))):
        _log.info(f"[pipeline] {phase_dir.name}: the recipe changed since its checkpoints were written; "
                  "starting this phase afresh")
        phase_cfg.train.resume = "never"


def _fresh_if_started_elsewhere(phase_dir: Path, phase_cfg: Any, fingerprint: str) -> None:
    """A checkpoint left by a run under another ``fingerprint`` (the phase's inputs, without ``train.resume``)
    holds weights trained from another starting model or on other data (an earlier phase retrained into the
    same folder has the same config and the same path), so ``resume: auto`` must not pick it up. Checkpoints
    with no ``started.json`` beside them were left by a version that did not record one: those of a run that
    completed (``complete.json``) were trained on what the phase has since changed from (it would not run
    again otherwise), and what the others started from cannot be checked; both start afresh.

    A phase starting afresh loses its checkpoints here, before ``started.json`` records this run's fingerprint:
    a run killed between the two must not leave old checkpoints under the new record."""
    started, saved = phase_dir / "started.json", phase_dir / "checkpoints"
    reason = None
    if saved.exists() and phase_cfg.train.resume == "auto":
        if started.exists():
            try:
                recorded = json.loads(started.read_text()).get("fingerprint")
            except (ValueError, AttributeError):
                recorded = None
            if recorded != fingerprint:
                reason = "an earlier phase or its data changed since its checkpoints were written"
        elif (phase_dir / "complete.json").exists():
            reason = "its checkpoints are those of a run that completed on other inputs"
        else:
            reason = "its checkpoints do not record what they were trained from (no started.json)"
    if reason is not None:
        _log.info(f"[pipeline] {phase_dir.name}: {reason}; starting this phase afresh")
        phase_cfg.train.resume = "never"
    if phase_cfg.train.resume == "never":
        clear_checkpoints(phase_dir)  # what the phase's own run would do, only later (after loading the model)
    if distributed.is_main():
        phase_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(started, (json.dumps({"fingerprint": fingerprint}) + "\n").encode())


# Recipe keys added after phases were first fingerprinted: left out of a phase's fingerprint (and of the
# changed-recipe check) while at a value that trains what the phase trained before they existed (their null
# default; for data.pii, report or off: a scan that changes no data), so a phase completed before stays complete.
LATER_KEYS = (("data", "test", (None,)), ("train", "early_stopping", (None,)), ("data", "preferred_holdout", (None,)),
              ("data", "curate", (None,)), ("data", "pii", ("report", "off")))


def comparable(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` (a phase config as a dict) without the :data:`LATER_KEYS` at a value that changes nothing."""
    out = dict(recipe)
    for section, key, inert in LATER_KEYS:
        if isinstance(out.get(section), dict) and key in out[section] and out[section][key] in inert:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def _inherited(trained: ModelOptions | None) -> ModelOptions | None:
    """How the eval phase loads models when `evaluation.model_options` is unset: like the last training phase
    (its remote code and attention kernel), but in float32. A lower training dtype is only ever a LoRA phase's
    frozen base, and merging the adapter into a bf16 base would evaluate a rounded copy of the trained model."""
    if trained is None:
        return None
    return dataclasses.replace(trained, dtype="float32")


def _generation_settings(evaluation: EvaluationConfig) -> dict[str, Any]:
    """The settings the answers depend on (not which reward model judges them; the load options are added
    resolved, by the caller)."""
    return {k: v for k, v in to_dict(evaluation).items() if k not in ("reward_model", "model_options")}


def _eval_reward_model(value: str | None, outputs: dict[str, str], reward_models: list[str]) -> str | None:
    """`evaluation.reward_model` as a model path, or None: "auto" is the last `rm` phase so far."""
    if value is None:
        return None
    if value == "auto":
        return outputs[reward_models[-1]] if reward_models else None
    if value.startswith("@"):
        try:
            return _resolve_reference(value, outputs)
        except AlignError as exc:
            raise AlignError(exc.message, field="evaluation.reward_model") from None
    return value


def _check_reward_model(path: str) -> None:
    from alignment.evaluation.judge import check_reward_model

    try:
        check_reward_model(path)
    except AlignError as exc:
        raise AlignError(exc.message, file=exc.file, field="evaluation.reward_model") from None


def _run_eval_phase(cfg: PipelineConfig, phase_dir: Path, models: dict[str, str],
                    reward_model: str | None = None, options: ModelOptions | None = None) -> None:
    """Every model answers the held-out prompts (cached per model); policy checks, then the reward model.

    ``models`` starts with "base", the baseline of the win rates. :func:`alignment.evaluation.run.evaluate`
    does the work with ``phase_dir`` as its cache: a model's answers in ``<label>.json``, the reward-model
    judgement of the whole set in ``rm.json``, so a retrained reward model rescores the answers without
    generating them again.
    """
    from alignment.evaluation.adherence import LEGEND, format_table, load_prompts
    from alignment.evaluation.rules import load_rules
    from alignment.evaluation.run import evaluate, pooled_length_line

    policies = load_rules(cfg.evaluation.policies)
    prompts = load_prompts(cfg.evaluation.prompts)
    if reward_model:  # before any generation: a wrong path costs seconds, not a generation run
        _check_reward_model(reward_model)
    report = evaluate(models, prompts, policies, baseline=next(iter(models)), reward_model=reward_model,
                      max_new_tokens=cfg.evaluation.max_new_tokens, batch_size=cfg.evaluation.batch_size,
                      prompts_file=cfg.evaluation.prompts, cache_dir=phase_dir,
                      log=lambda message: _log.info(f"[pipeline] eval: {message}"), model_options=options)
    table = format_table(report.results, policies)
    report.write(phase_dir / "results.json")
    (phase_dir / "table.txt").write_text(table + "\n")
    print(f"\nPolicy adherence on {len(prompts)} held-out prompts:\n{table}\n")
    if report.reward_model:
        print(f"Reward model: {reward_model}; {pooled_length_line(report)}")
        print(LEGEND + "\n")
