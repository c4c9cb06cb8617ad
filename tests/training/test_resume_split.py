"""A checkpoint records the held-out split it was trained under (settings and a hash of the test examples), and a
run resumed under another split is refused with one message naming what changed: its weights may have trained on
what is now the test part."""

from __future__ import annotations

import json
from pathlib import Path

from alignment.cli import main
from tests.conftest import write_jsonl

THREE_WAY = {"train": 0.7, "validation": 0.15, "test": 0.15}


def _run(tmp_path: Path, recipe: dict, *extra: str) -> int:
    path = tmp_path / f"{recipe['phase']}.yaml"
    path.write_text(json.dumps(recipe))  # JSON is valid YAML
    return main([recipe["phase"], "--config", str(path), *extra])


def _sft_recipe(model: Path, data: Path, out: Path, *, max_steps: int, save_every: int) -> dict:
    return {"phase": "sft", "model": str(model), "output_dir": str(out),
            "data": {"train": str(data), "max_length": 96, "split": THREE_WAY},
            "train": {"max_steps": max_steps, "batch_size": 4, "eval_every": 0, "save_every": save_every,
                      "bf16": "false"},
            "tracking": {"backends": ["none"]}}


def test_sft_refuses_to_resume_under_another_split_or_test_set(tmp_path, tiny_model_dir, sft_file, capsys):
    out = tmp_path / "sft"
    recipe = _sft_recipe(tiny_model_dir, sft_file, out, max_steps=4, save_every=2)
    assert _run(tmp_path, recipe) == 0
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["split"]["data.split"] == THREE_WAY and state["split"]["train.seed"] == 42
    assert state["split"]["test_examples"] > 0 and len(state["split"]["test_keys"]) == 16
    capsys.readouterr()

    # the same split resumes
    assert _run(tmp_path, recipe) == 0
    assert "resumed from" in capsys.readouterr().out

    # another test fraction: refused before anything is trained, naming the setting and the ways on
    recipe["data"]["split"] = {"train": 0.6, "validation": 0.15, "test": 0.25}
    assert _run(tmp_path, recipe) == 2
    err = capsys.readouterr().err
    assert "will not resume from" in err and "step-2" in err and "field 'train.resume'" in err
    assert "data.split {'train': 0.7, 'validation': 0.15, 'test': 0.15} -> {'train': 0.6" in err
    assert "train.resume=never" in err and "restore the split" in err
    assert (out / "checkpoints" / "step-2").exists(), "the checkpoint is kept: restoring the split resumes it"

    # another seed moves rows between the parts too
    recipe["data"]["split"] = THREE_WAY
    assert _run(tmp_path, recipe, "train.seed=7") == 2
    assert "train.seed 42 -> 7" in capsys.readouterr().err

    # starting afresh is the way on
    assert _run(tmp_path, recipe, "train.seed=7", "train.resume=never") == 0
    assert "resumed from" not in capsys.readouterr().out


def test_a_changed_test_file_is_refused_though_the_settings_are_the_same(tmp_path, tiny_model_dir,
                                                                          toy_preferences, capsys):
    rows = [json.loads(line) for line in toy_preferences.read_text().splitlines()]
    test_file = write_jsonl(tmp_path / "test.jsonl", rows[:10])
    out = tmp_path / "dpo"
    recipe = {"phase": "dpo", "model": str(tiny_model_dir), "output_dir": str(out),
              "data": {"train": str(toy_preferences), "test": str(test_file), "max_length": 96},
              "train": {"max_steps": 2, "batch_size": 8, "eval_every": 0, "save_every": 1, "bf16": "false"},
              "tracking": {"backends": ["none"]}}
    assert _run(tmp_path, recipe) == 0
    capsys.readouterr()
    write_jsonl(test_file, rows[10:20])  # the same file name, other test pairs: rows[10:20] were trained on
    assert _run(tmp_path, recipe) == 2
    err = capsys.readouterr().err
    assert "the test examples (10 -> 10 examples, not the same ones: the data files changed)" in err


def test_a_checkpoint_split_under_an_older_scheme_is_refused(tmp_path, tiny_model_dir, sft_file, capsys):
    """Split scheme 2 places text equal up to whitespace together: a checkpoint whose record has no scheme
    (written before, scheme 1) may have trained on rows that now fall in the test part, so resuming it is refused
    with the scheme named, though the settings and files are the same."""
    out = tmp_path / "sft"
    recipe = _sft_recipe(tiny_model_dir, sft_file, out, max_steps=2, save_every=1)
    assert _run(tmp_path, recipe) == 0
    states = sorted((out / "checkpoints").glob("step-*/trainer_state.json"))
    assert states and all(json.loads(p.read_text())["split"]["split_scheme"] == 2 for p in states)
    for path in states:  # what the same run wrote before the scheme was recorded
        state = json.loads(path.read_text())
        del state["split"]["split_scheme"]
        path.write_text(json.dumps(state))
    capsys.readouterr()
    assert _run(tmp_path, recipe) == 2
    err = capsys.readouterr().err
    assert "will not resume from" in err and "field 'train.resume'" in err
    assert "the split scheme 1 -> 2: the checkpoint was written by an older version of align" in err
    assert "equal up to whitespace are placed together" in err and "train.resume=never" in err
    assert "restore the split settings" not in err  # nothing to restore: the settings are the same
    assert _run(tmp_path, recipe, "train.resume=never") == 0
