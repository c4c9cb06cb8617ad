"""Strict recipe loading: errors name the file, the line, the field and a fix; values are never rewritten."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from alignment.config import SFTConfig, load_config, parse_overrides, save_config
from alignment.errors import AlignError


def recipe(tmp_path: Path, text: str, name: str = "sft.yaml") -> Path:
    """A recipe file whose `data.train` (when given as `t.jsonl`) exists next to it."""
    (tmp_path / "t.jsonl").write_text('{"text": "hello"}\n', encoding="utf-8")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path | None, overrides: list[str] | None = None) -> AlignError:
    with pytest.raises(AlignError) as info:
        load_config(SFTConfig, path, overrides)
    return info.value


# --------------------------------------------------------------------------------------------------
# Unknown keys
# --------------------------------------------------------------------------------------------------
def test_unknown_nested_key_names_file_line_field_and_suggestion(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  epochs: 1\n  lrr: 1.0e-4\n")
    err = load_error(path)
    message = str(err)
    assert f"{path}:5" in message
    assert "train.lrr" in message
    assert "did you mean 'train.lr'" in message
    assert (err.file, err.line, err.field) == (str(path), 5, "train.lrr")


def test_unknown_top_level_key_suggests_the_section(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrian:\n  lr: 1.0\n")
    message = str(load_error(path))
    assert f"{path}:3" in message
    assert "'trian'" in message
    assert "did you mean 'train'" in message


def test_unknown_key_without_a_close_match_lists_the_valid_keys(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\nzzzz: 1\n")
    message = str(load_error(path))
    assert f"{path}:3" in message
    assert "did you mean" not in message
    for key in ("model", "output_dir", "data", "lora", "train", "tracking"):
        assert key in message


# --------------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------------
def test_wrong_type_names_field_line_and_expected_type(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  batch_size: \"eight\"\n")
    err = load_error(path)
    assert f"{path}:4" in str(err)
    assert err.field == "train.batch_size"
    assert "integer" in str(err) and "'eight'" in str(err)


def test_wrong_type_in_a_list_names_the_item(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntracking:\n  backends:\n    - wandb\n    - tensorbord\n")
    err = load_error(path)
    assert err.field == "tracking.backends[1]"
    assert err.line == 6
    assert "did you mean 'tensorboard'" in str(err)


def test_exponent_without_dot_is_read_as_a_float(tmp_path):
    # YAML 1.1 (PyYAML) reads `5e-5` as the string "5e-5"; the loader turns it into the number.
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  lr: 5e-5\n")
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "5e-5"  # the premise
    cfg = load_config(SFTConfig, path)
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.lr == 5e-05


def test_non_numeric_string_for_a_float_is_an_error(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  lr: fast\n")
    err = load_error(path)
    assert (err.line, err.field) == (4, "train.lr")
    assert "number" in str(err)


def test_literal_mismatch_suggests_the_closest_value(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\n  dedup: exat\n")
    err = load_error(path)
    assert f"{path}:3" in str(err)
    assert err.field == "data.dedup"
    assert "did you mean 'exact'" in str(err)


@pytest.mark.parametrize(("written", "expected"), [("true", "true"), ("false", "false"), ("auto", "auto")])
def test_yaml_booleans_are_accepted_for_true_false_literals(tmp_path, written, expected):
    path = recipe(tmp_path, f"data:\n  train: t.jsonl\ntrain:\n  bf16: {written}\n")
    assert load_config(SFTConfig, path).train.bf16 == expected


def test_yaml_boolean_is_refused_for_a_literal_without_true_false(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  scheduler: true\n")
    assert load_error(path).field == "train.scheduler"


def test_string_for_a_bool_field_is_an_error(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\nlora:\n  enabled: \"yes\"\n")
    err = load_error(path)
    assert (err.line, err.field) == (4, "lora.enabled")


def test_valid_recipe_sets_every_written_value(tmp_path):
    path = recipe(tmp_path, (
        "model: my-model-dir\n"
        "output_dir: runs/x\n"
        "data:\n  train: t.jsonl\n  dedup: exact\n  max_length: 64\n  packing: true\n"
        "lora:\n  enabled: true\n  r: 4\n  target_modules: [q_proj, v_proj]\n"
        "train:\n  epochs: 2\n  max_steps: 10\n  scheduler: linear\n"
        "tracking:\n  backends: [none]\n"
    ))
    cfg = load_config(SFTConfig, path)
    assert cfg.model == "my-model-dir"  # no such folder next to the recipe: left as written
    assert cfg.output_dir == "runs/x"
    assert (cfg.data.dedup, cfg.data.max_length, cfg.data.packing) == ("exact", 64, True)
    assert (cfg.lora.enabled, cfg.lora.r, cfg.lora.target_modules) == (True, 4, ["q_proj", "v_proj"])
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.train.scheduler) == (2.0, 10, "linear")
    assert isinstance(cfg.train.epochs, float)
    assert cfg.tracking.backends == ["none"]
    assert cfg.train.lr == 2.0e-5  # untouched default


# --------------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------------
def test_dotted_overrides_apply_on_top_of_the_recipe(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  lr: 1.0e-5\n  epochs: 3\n")
    cfg = load_config(SFTConfig, path,
                      ["train.lr=1e-4", "lora.enabled=true", "data.split={train: 0.9, validation: 0.1}"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.epochs == 3.0  # a sibling of an overridden key is kept
    assert cfg.lora.enabled is True
    assert cfg.data.split == {"train": 0.9, "validation": 0.1}
    assert cfg.data.train == str(tmp_path / "t.jsonl")


def test_overrides_alone_build_a_config_without_a_file():
    cfg = load_config(SFTConfig, None, {"data.train": "somewhere.jsonl", "train.batch_size": 2})
    assert cfg.data.train == "somewhere.jsonl"
    assert cfg.train.batch_size == 2


@pytest.mark.parametrize("override", ["train.lrr=1e-4", "train.batch_size=eight"])
def test_override_error_says_it_came_from_the_command_line(tmp_path, override):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  batch_size: 4\n")
    err = load_error(path, [override])
    assert "(from the command-line override)" in str(err)
    assert err.field == override.split("=")[0]
    assert err.line is None  # no line of the recipe file is blamed


def test_error_inside_an_overridden_section_is_blamed_on_the_override(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\n  split: {train: 0.5, validation: 0.5}\n")
    err = load_error(path, ["data.split={train: abc}"])
    assert "(from the command-line override)" in str(err)


def test_override_through_a_scalar_is_an_error(tmp_path):
    path = recipe(tmp_path, "model: base\ndata:\n  train: t.jsonl\n")
    with pytest.raises(AlignError, match="'model' is not a section"):
        load_config(SFTConfig, path, ["model.name=x"])


def test_parse_overrides_reads_values_as_yaml():
    assert parse_overrides(["lora.enabled=true", "train.batch_size=4", "data.split={train: 1.0}",
                            "output_dir=runs/a=b", "deepspeed=null", "model="]) == {
        "lora.enabled": True,
        "train.batch_size": 4,
        "data.split": {"train": 1.0},
        "output_dir": "runs/a=b",  # split on the first '=' only
        "deepspeed": None,
        "model": "",
    }


@pytest.mark.parametrize("item", ["train.lr", "lora.enabled:true", ""])
def test_parse_overrides_rejects_an_item_without_equals(item):
    with pytest.raises(AlignError, match="key=value"):
        parse_overrides([item])


def test_parse_overrides_rejects_an_empty_key():
    with pytest.raises(AlignError, match="no key"):
        parse_overrides(["=1"])


# --------------------------------------------------------------------------------------------------
# Cross-checks in __post_init__ and malformed files
# --------------------------------------------------------------------------------------------------
def test_post_init_error_carries_file_and_line_of_the_key(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  epochs: 1\n  batch_size: 0\n")
    err = load_error(path)
    assert (err.file, err.line, err.field) == (str(path), 5, "train.batch_size")
    assert f"{path}:5" in str(err)
    assert "at least 1" in str(err)


def test_missing_train_data_points_at_the_data_section(tmp_path):
    path = recipe(tmp_path, "output_dir: runs/x\ndata:\n  max_length: 64\n")
    err = load_error(path)
    assert (err.file, err.line, err.field) == (str(path), 2, "data.train")
    assert f"{path}:2" in str(err)


def test_missing_data_section_names_the_file_and_field(tmp_path):
    path = recipe(tmp_path, "output_dir: runs/x\n")
    err = load_error(path)
    assert (err.file, err.field) == (str(path), "data.train")
    assert "required" in str(err)


def test_data_post_init_error_carries_the_line(tmp_path):
    path = recipe(tmp_path, "data:\n  train: t.jsonl\n  max_length: 4\n")
    err = load_error(path)
    assert (err.line, err.field) == (3, "data.max_length")


@pytest.mark.parametrize(("text", "line"), [
    ("data:\n  train: t.jsonl\ntrain:\n  lr: 1: 2\n", 4),
    ("data:\n  train: t.jsonl\n\ttrain: 1\n", 3),
])
def test_invalid_yaml_names_the_line(tmp_path, text, line):
    path = recipe(tmp_path, text)
    err = load_error(path)
    assert "invalid YAML" in str(err)
    assert f"{path}:{line}" in str(err)


def test_a_recipe_that_is_not_a_mapping_is_refused(tmp_path):
    path = recipe(tmp_path, "- data\n- train\n")
    assert "mapping" in str(load_error(path))


def test_missing_recipe_file_is_an_align_error(tmp_path):
    err = load_error(tmp_path / "absent.yaml")
    assert "not found" in str(err) and "absent.yaml" in str(err)


# --------------------------------------------------------------------------------------------------
# Relative paths
# --------------------------------------------------------------------------------------------------
def test_relative_data_path_resolves_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes" / "mine"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "sft.jsonl").write_text("{}\n")
    (folder / "data" / "val.jsonl").write_text("{}\n")
    path = folder / "sft.yaml"
    path.write_text("data:\n  train: data/sft.jsonl\n  validation: data/val.jsonl\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(SFTConfig, path)
    assert cfg.data.train == str(folder / "data" / "sft.jsonl")
    assert cfg.data.validation == str(folder / "data" / "val.jsonl")


def test_relative_path_missing_next_to_the_recipe_is_left_as_written(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    path = folder / "sft.yaml"
    path.write_text("data:\n  train: data/nowhere.jsonl\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(SFTConfig, path).data.train == "data/nowhere.jsonl"


def test_recipe_folder_wins_over_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "sft.jsonl").write_text("{}\n")
    path = folder / "sft.yaml"
    path.write_text("data:\n  train: data/sft.jsonl\n")
    cwd = tmp_path / "project"
    (cwd / "data").mkdir(parents=True)
    (cwd / "data" / "sft.jsonl").write_text("{}\n")
    monkeypatch.chdir(cwd)
    assert load_config(SFTConfig, path).data.train == str(folder / "data" / "sft.jsonl")


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------
def test_save_then_load_round_trips(tmp_path):
    path = recipe(tmp_path, (
        "data:\n  train: t.jsonl\n  dedup: exact\n  split: {train: 0.8, validation: 0.2}\n"
        "lora:\n  enabled: true\n  target_modules: [q_proj]\n"
        "train:\n  lr: 5e-5\n  bf16: false\n  resume: never\n"
        "tracking:\n  backends: [tensorboard]\n  run_name: demo\n"
    ))
    cfg = load_config(SFTConfig, path, ["train.max_steps=7"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    saved = yaml.safe_load(out.read_text())
    # every field is written, defaults included
    assert set(saved) == {f.name for f in dataclasses.fields(SFTConfig)}
    assert saved["train"]["scheduler"] == "cosine"
    assert saved["deepspeed"] is None
    again = load_config(SFTConfig, out)
    assert again == cfg
    assert again.train.lr == 5e-05 and again.train.max_steps == 7
    assert not list(out.parent.glob("*.tmp"))


# --------------------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------------------
def _phase_recipe(tmp_path: Path, phase: str, train: str, data: str = "") -> Path:
    return recipe(tmp_path, f"phase: {phase}\ndata:\n  train: t.jsonl\n{data}train:\n{train}", f"{phase}.yaml")


def _phase_error(path: Path, overrides: list[str] | None = None) -> AlignError:
    from alignment.phases import PHASES

    phase = yaml.safe_load(path.read_text())["phase"]
    with pytest.raises(AlignError) as info:
        load_config(PHASES[phase].config, path, overrides)
    return info.value


def test_early_stopping_is_off_by_default_and_fills_in_the_phase_defaults(tmp_path):
    from alignment.config import DPOConfig, RMConfig

    assert load_config(SFTConfig, recipe(tmp_path, "data:\n  train: t.jsonl\n")).train.early_stopping is None
    es = load_config(SFTConfig, _phase_recipe(tmp_path, "sft", "  early_stopping: {}\n")).train.early_stopping
    assert (es.metric, es.mode, es.patience, es.min_delta) == ("eval/loss", "min", 3, 0.0)
    es = load_config(RMConfig, _phase_recipe(tmp_path, "rm", "  early_stopping: {patience: 2}\n")).train.early_stopping
    assert (es.metric, es.mode, es.patience) == ("eval/rewards/accuracies", "max", 2)
    path = _phase_recipe(tmp_path, "dpo", "  early_stopping:\n    metric: eval/rewards/margins\n")
    assert load_config(DPOConfig, path).train.early_stopping.mode == "max"
    assert load_config(DPOConfig, path, ["train.early_stopping.metric=eval/loss"]).train.early_stopping.mode == "min"
    path = _phase_recipe(tmp_path, "dpo", "  early_stopping: {metric: eval/logps/rejected, mode: max}\n")
    es = load_config(DPOConfig, path).train.early_stopping
    assert (es.metric, es.mode) == ("eval/logps/rejected", "max")  # a mode written is kept
    # the resolved recipe a run writes loads back the same
    save_config(cfg := load_config(DPOConfig, path), tmp_path / "saved.yaml")
    assert load_config(DPOConfig, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize(("phase", "metric", "valid"), [
    ("sft", "eval/rewards/accuracies", "eval/loss"),
    ("rm", "eval/loss", "eval/rewards/accuracies, eval/rewards/margins, eval/rewards/chosen, eval/rewards/rejected"),
    ("dpo", "loss", "eval/loss, eval/rewards/accuracies"),
])
def test_early_stopping_refuses_a_metric_the_phase_does_not_log(tmp_path, phase, metric, valid):
    err = _phase_error(_phase_recipe(tmp_path, phase, f"  early_stopping:\n    metric: {metric}\n"))
    assert err.field == "train.early_stopping.metric" and err.line == 6
    assert f"'{metric}' is not a held-out metric" in err.message and valid in err.message
    if phase == "dpo":
        assert "did you mean 'eval/loss'" in err.message


def test_early_stopping_needs_evaluations_and_validation_data(tmp_path):
    err = _phase_error(_phase_recipe(tmp_path, "sft", "  eval_every: 0\n  early_stopping: {}\n"))
    assert err.field == "train.early_stopping" and "train.eval_every is 0" in err.message
    no_split = "  split: {train: 1.0}\n"
    for phase in ("sft", "rm", "dpo"):
        err = _phase_error(_phase_recipe(tmp_path, phase, "  early_stopping: {}\n", no_split))
        assert err.field == "train.early_stopping" and "validation data" in err.message
    # a validation file is validation data
    path = _phase_recipe(tmp_path, "sft", "  early_stopping: {}\n", no_split + "  validation: t.jsonl\n")
    assert load_config(SFTConfig, path).train.early_stopping.metric == "eval/loss"


@pytest.mark.parametrize(("written", "field"), [
    ("{patience: 0}", "train.early_stopping.patience"),
    ("{min_delta: -0.1}", "train.early_stopping.min_delta"),
    ("{mode: maximum}", "train.early_stopping.mode"),
    ("{metric: ''}", "train.early_stopping.metric"),
    ("{patiense: 2}", "train.early_stopping.patiense"),
])
def test_early_stopping_bad_values_name_their_field(tmp_path, written, field):
    err = _phase_error(_phase_recipe(tmp_path, "sft", f"  early_stopping: {written}\n"))
    assert err.field == field and err.line == 5


@pytest.mark.parametrize(("phase", "extra", "named"), [
    ("ppo", "", "ppo"),
    ("dpo", "negatives: kto\n", "kto"),
])
def test_early_stopping_is_refused_where_it_is_not_supported(tmp_path, phase, extra, named):
    path = recipe(tmp_path, f"phase: {phase}\n{extra}data:\n  train: t.jsonl\ntrain:\n  early_stopping: {{}}\n",
                  f"{phase}.yaml")
    err = _phase_error(path)
    assert err.field == "train.early_stopping"
    assert f"not supported for {named}" in err.message and "supported for sft, rm and dpo" in err.message
