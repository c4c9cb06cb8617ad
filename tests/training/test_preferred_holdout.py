"""SFT's `data.preferred` never trains on a prompt the preference phases hold out of that file: in a pipeline it
takes their split, seed and files (the union when RM and DPO differ); standalone, `data.preferred_holdout` says
how they split it, and a recipe that could hold nothing out by accident is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.cli import main
from alignment.config import DPOConfig, RMConfig, SFTConfig, load_config
from alignment.errors import AlignError
from alignment.pipeline import load_pipeline, preferred_holdout
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart"
THREE_WAY = {"train": 0.7, "validation": 0.15, "test": 0.15}
SMALL = {"train.max_steps": 1, "train.batch_size": 4, "train.eval_every": 0, "train.save_every": 0,
         "train.bf16": "false", "tracking.backends": ["none"], "data.max_length": 96}


def _question(record: dict) -> str:
    """The user turn of an SFT record or of a pair's prompt."""
    return next(m["content"] for m in record if m["role"] == "user")


def _held_out_questions(kind: str, path: Path) -> set[str]:
    """The prompts the phase (as it ran, from its config.yaml) held out: validation and test."""
    from alignment.data.preferences import load_pair_splits

    cfg = load_config({"rm": RMConfig, "dpo": DPOConfig}[kind], path)
    _, val, test, _ = load_pair_splits(cfg.data, cfg.train.seed)
    return {_question(ex.prompt) for ex in val + test}


def _trained_questions(cfg: SFTConfig) -> set[str]:
    """The user turns of every conversation SFT trains on."""
    from alignment.sft import load_sft_splits

    train, _, _, _ = load_sft_splits(cfg)
    return {_question(r["messages"]) for r in train}


def _pipeline(tmp_path: Path, model: Path, sft_file: Path, prefs: Path, *, dpo: dict, rm: dict | None = None) -> Path:
    phases = [{"name": "sft", "kind": "sft", "recipe": str(QUICKSTART / "sft.yaml"),
               "overrides": {**SMALL, "data.train": str(sft_file), "data.preferred": str(prefs)}}]
    if rm is not None:
        phases.append({"name": "rm", "kind": "rm", "recipe": str(QUICKSTART / "rm.yaml"),
                       "overrides": {**SMALL, "data.train": str(prefs), **rm}})
    phases.append({"name": "dpo", "kind": "dpo", "recipe": str(QUICKSTART / "dpo.yaml"),
                   "overrides": {**SMALL, "data.train": str(prefs), **dpo}})
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({"name": "leak", "output_dir": str(tmp_path / "runs"), "model": str(model),
                                "phases": phases}))
    return path


def test_a_pipeline_sft_trains_on_none_of_dpos_test_or_validation_prompts(tmp_path, tiny_model_dir, sft_file,
                                                                         toy_preferences):
    from alignment.sft import preferred_conversations

    # DPO holds out a test part too, under another seed than SFT's: neither is the default SFT assumed before
    path = _pipeline(tmp_path, tiny_model_dir, sft_file, toy_preferences,
                     dpo={"data.split": THREE_WAY, "train.seed": 7})
    assert main(["run", str(path)]) == 0
    runs = tmp_path / "runs"
    sft_cfg = load_config(SFTConfig, runs / "sft" / "config.yaml")  # SFT's config as it ran
    assert [(h.split, h.seed, h.test) for h in sft_cfg.data.preferred_holdout] == [(THREE_WAY, 7, None)]
    held = _held_out_questions("dpo", runs / "dpo" / "config.yaml")
    trained = _trained_questions(sft_cfg)
    assert held and not held & trained
    preferred = {_question(r["messages"]) for r in preferred_conversations(str(toy_preferences), 42)}
    assert held & preferred, "the old default (SFT's seed, no test part) would have trained on some of them"
    assert trained >= {_question(r["messages"]) for r in preferred_conversations(
        str(toy_preferences), 42, sft_cfg.data.preferred_holdout)}, "every other preferred answer is trained on"


def test_rm_and_dpo_splitting_the_file_differently_leave_out_the_union(tmp_path, sft_file, toy_preferences):
    test_file = write_jsonl(tmp_path / "dpo-test.jsonl",
                            [json.loads(line) for line in toy_preferences.read_text().splitlines()[:5]])
    path = _pipeline(tmp_path, Path("m"), sft_file, toy_preferences,
                     rm={"data.split": {"train": 0.8, "validation": 0.2}},
                     dpo={"data.split": THREE_WAY, "data.test": str(test_file), "train.seed": 3})
    cfg = load_pipeline(path, [])
    sft = cfg.phases[0]
    written = load_config(SFTConfig, sft.recipe, {**sft.overrides, "model": "m"})
    holdout = preferred_holdout(cfg, written)
    assert holdout == [{"split": {"train": 0.8, "validation": 0.2}, "seed": 42, "validation": None, "test": None},
                       {"split": THREE_WAY, "seed": 3, "validation": None, "test": str(test_file)}]
    sft_cfg = load_config(SFTConfig, sft.recipe, {**sft.overrides, "model": "m", "data.preferred_holdout": holdout})
    trained = _trained_questions(sft_cfg)

    from alignment.data.preferences import load_pair_splits

    held: set[str] = set()
    for step in cfg.phases[1:]:
        phase = load_config({"rm": RMConfig, "dpo": DPOConfig}[step.kind], step.recipe, step.overrides)
        _, val, test, _ = load_pair_splits(phase.data, phase.train.seed)
        part = {_question(ex.prompt) for ex in val + test}
        assert part and not part & trained, step.name
        held |= part
    assert {_question(r) for r in _rows_prompts(test_file)} <= held
    all_prompts = {_question(r) for r in _rows_prompts(toy_preferences)}
    assert trained & all_prompts == all_prompts - held, "the rest of the preferred answers are trained on"


def _rows_prompts(path: Path) -> list[list[dict]]:
    return [[{"role": "user", "content": json.loads(line)["prompt"]}] for line in path.read_text().splitlines()]


def test_a_pipeline_whose_phases_use_the_default_split_keeps_the_sft_recipe_unchanged(tmp_path, sft_file,
                                                                                   toy_preferences):
    """The fingerprint of an existing pipeline stays: no data.preferred_holdout is added for the default."""
    path = _pipeline(tmp_path, Path("m"), sft_file, toy_preferences, rm={}, dpo={})
    cfg = load_pipeline(path, [])
    sft = cfg.phases[0]
    assert preferred_holdout(cfg, load_config(SFTConfig, sft.recipe, {**sft.overrides, "model": "m"})) is None
    # a DPO phase that trains on another file but holds out a test file: its prompts are left out
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    cfg.phases[-1].overrides.update({"data.train": str(other), "data.test": str(toy_preferences)})
    holdout = preferred_holdout(cfg, load_config(SFTConfig, sft.recipe, {**sft.overrides, "model": "m"}))
    assert holdout == [{"split": {"train": 0.9, "validation": 0.1}, "seed": 42, "validation": None, "test": None},
                       {"split": {"train": 1.0}, "seed": 42, "validation": None, "test": str(toy_preferences)}]
    sft_cfg = load_config(SFTConfig, sft.recipe, {**sft.overrides, "model": "m", "data.preferred_holdout": holdout})
    assert not _trained_questions(sft_cfg) & {_question(r) for r in _rows_prompts(toy_preferences)}


def test_standalone_preferred_holdout_is_read_checked_and_relative_to_the_recipe(tmp_path, sft_file,
                                                                                 toy_preferences):
    rows = [json.loads(line) for line in toy_preferences.read_text().splitlines()]
    write_jsonl(tmp_path / "held.jsonl", rows[:4])
    recipe = tmp_path / "sft.yaml"

    def load(**data: object) -> SFTConfig:
        recipe.write_text(json.dumps({"phase": "sft", "model": "x", "data": {"train": str(sft_file), **data}}))
        return load_config(SFTConfig, recipe)

    cfg = load(preferred=str(toy_preferences),
               preferred_holdout=[{"split": THREE_WAY, "seed": 5, "test": "held.jsonl"}])
    (entry,) = cfg.data.preferred_holdout
    assert entry.test == str(tmp_path / "held.jsonl") and entry.seed == 5 and entry.validation is None
    trained = _trained_questions(cfg)
    assert not trained & {r["prompt"] for r in rows[:4]}

    from alignment.data.preferences import load_preference_examples, split_pairs

    examples, _ = load_preference_examples(str(toy_preferences))
    parts = split_pairs(examples, THREE_WAY, 5, ("test",))  # the test part comes from the file: not cut
    assert set(parts) == {"train", "validation"}
    assert not trained & {_question(ex.prompt) for ex in parts["validation"]}

    with pytest.raises(AlignError, match="is empty"):
        load(preferred=str(toy_preferences), preferred_holdout=[])
    with pytest.raises(AlignError, match="data.preferred is not set"):
        load(preferred_holdout=[{"seed": 1}])
    with pytest.raises(AlignError, match=r"preferred_holdout\[0\]\.split"):
        load(preferred=str(toy_preferences), preferred_holdout=[{"split": {"train": 0.5}}])
    with pytest.raises(AlignError, match="unknown key 'tset'"):
        load(preferred=str(toy_preferences), preferred_holdout=[{"tset": "held.jsonl"}])


def test_sfts_own_validation_and_test_prompts_do_not_come_back_through_the_preferred_answers(tmp_path,
                                                                                             toy_preferences):
    """An SFT file made of the same prompts as the preference file (a common layout: prompt + a reference answer,
    and pairs on those prompts): the preferred answer to a prompt SFT holds out for validation or test would
    train on that prompt."""
    from alignment.sft import load_sft_splits

    pairs = [json.loads(line) for line in toy_preferences.read_text().splitlines()]
    sft = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i, p in enumerate(pairs)])
    cfg = load_config(SFTConfig, None, {"model": "m", "data.train": str(sft), "data.preferred": str(toy_preferences),
                                        "data.split": THREE_WAY})
    train, val, test, report = load_sft_splits(cfg)
    held = {_question(r["messages"]) for r in val + test}
    assert held and report.preferred_added
    assert not held & {_question(r["messages"]) for r in train}


def test_masked_preferred_answers_leave_out_what_either_split_holds_out(tmp_path, sft_file):
    """With data.pii: mask SFT reads a masked copy of data.preferred, whose prompts hash elsewhere than the
    originals an RM or DPO phase (its own data.pii: report) splits, and a holdout file's prompts are written
    unmasked: SFT leaves out what the original's split holds out, what the copy's split holds out, and the holdout
    file's prompts, each compared in its masked form."""
    import re

    from alignment.data.preferences import load_preference_examples, split_pairs
    from alignment.pipeline import load_phase_config

    rows = [{"prompt": f"Question {i} from jane.doe{i}@example.com: can you help with my claim?",
             "chosen": "Certainly, I can help with your claim.", "rejected": "No."} for i in range(120)]
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    write_jsonl(tmp_path / "held.jsonl", rows[:4])
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(json.dumps({"phase": "sft", "model": "x", "output_dir": str(tmp_path / "out"),
                                  "data": {"train": str(sft_file), "preferred": str(prefs), "pii": "mask",
                                           "preferred_holdout": [{"split": THREE_WAY, "seed": 5,
                                                                  "test": "held.jsonl"}]}}))
    _, cfg, _ = load_phase_config("sft", str(recipe), [])
    assert cfg.data.preferred != str(prefs) and "example.com" not in Path(cfg.data.preferred).read_text()

    def number(question: str) -> int | None:
        found = re.match(r"Question (\d+) ", question)
        return int(found.group(1)) if found else None

    trained = {number(q) for q in _trained_questions(cfg)} - {None}
    assert trained, "the preferred answers are trained on"
    held = set(range(4))  # the holdout file
    for path in (prefs, Path(cfg.data.preferred)):  # as an RM/DPO phase reading either would split it
        examples, _ = load_preference_examples(str(path))
        held |= {number(_question(ex.prompt)) for ex in split_pairs(examples, THREE_WAY, 5, ("test",))["validation"]}
    assert not trained & held


def test_an_unmasked_sft_leaves_out_what_a_masked_dpo_phase_holds_out(tmp_path, sft_file):
    """The converse: SFT reads data.preferred as written (data.pii: report) while the DPO phase trains on a masked
    copy (its data.pii: mask), so DPO's split is cut on the masked prompts, which hash elsewhere than the originals:
    SFT leaves out every prompt DPO holds out, compared in masked form."""
    import re

    from alignment.data.preferences import load_pair_splits
    from alignment.pipeline import load_phase_config

    rows = [{"prompt": f"Question {i} from jane.doe{i}@example.com: can you help with my claim?",
             "chosen": "Certainly, I can help with your claim.", "rejected": "No."} for i in range(120)]
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    path = _pipeline(tmp_path, Path("m"), sft_file, prefs,
                     dpo={"data.split": THREE_WAY, "train.seed": 5, "data.pii": "mask"})
    cfg = load_pipeline(path, [])
    sft, dpo = cfg.phases[0], cfg.phases[-1]
    holdout = preferred_holdout(cfg, load_config(SFTConfig, sft.recipe, {**sft.overrides, "model": "m"}))
    _, sft_cfg, _ = load_phase_config("sft", sft.recipe, {**sft.overrides, "model": "m", "data.preferred_holdout":
                                                          holdout, "output_dir": str(tmp_path / "runs" / "sft")})
    assert sft_cfg.data.pii == "report" and sft_cfg.data.preferred == str(prefs)  # read as written
    _, dpo_cfg, _ = load_phase_config("dpo", dpo.recipe, {**dpo.overrides, "model": "m",
                                                          "output_dir": str(tmp_path / "runs" / "dpo")})
    assert "example.com" not in Path(dpo_cfg.data.train).read_text()  # DPO reads (and splits) the masked copy

    def number(question: str) -> int | None:
        found = re.match(r"Question (\d+) ", question)
        return int(found.group(1)) if found else None

    _, val, test, _ = load_pair_splits(dpo_cfg.data, dpo_cfg.train.seed)
    held = {number(_question(ex.prompt)) for ex in val + test}
    trained = {number(q) for q in _trained_questions(sft_cfg)} - {None}
    assert held and trained, "some prompts are held out, the rest of the preferred answers trained on"
    assert not trained & held
