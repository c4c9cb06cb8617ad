"""Every saved model gets a card (base model, data files with hashes, metrics, the recipe as it ran), and an
adapter names its base portably when the recipe named it by alias or hub id."""

from __future__ import annotations

import json

import yaml

from alignment.cli import main
from alignment.data.fingerprint import data_fingerprint
from alignment.default_model import DEFAULT_MODEL_ALIAS
from alignment.model_card import make_adapter_portable, portable_base


def test_aliases_and_hub_ids_travel_local_folders_do_not(tmp_path):
    assert portable_base(DEFAULT_MODEL_ALIAS) == DEFAULT_MODEL_ALIAS
    assert portable_base("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    assert portable_base(str(tmp_path / "org" / "model")) is None  # a folder of this machine
    assert portable_base("./runs/sft") is None and portable_base("a/b/c") is None


def test_an_adapter_records_the_portable_base_name(tmp_path):
    adapter = tmp_path / "model"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/me/.cache/x/smol",
                                                             "r": 8}))
    assert make_adapter_portable(adapter, DEFAULT_MODEL_ALIAS)
    assert json.loads((adapter / "adapter_config.json").read_text()) == {
        "base_model_name_or_path": DEFAULT_MODEL_ALIAS, "r": 8}
    assert not make_adapter_portable(adapter, str(tmp_path))  # a local base keeps its path
    assert not make_adapter_portable(tmp_path / "missing", DEFAULT_MODEL_ALIAS)


def test_align_sft_writes_a_card_beside_the_model(tmp_path, tiny_model_dir, sft_file):
    out = tmp_path / "run"
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(json.dumps({
        "phase": "sft", "model": str(tiny_model_dir), "output_dir": str(out),
        "data": {"train": str(sft_file), "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 4, "bf16": "false", "save_every": 0, "eval_every": 0},
        "tracking": {"backends": ["none"]}}))
    assert main(["sft", "--config", str(recipe)]) == 0
    card = (out / "model" / "README.md").read_text()
    assert "# run: sft model" in card and f"| started from | `{tiny_model_dir}` |" in card
    sha = data_fingerprint({"data.train": str(sft_file)})["data.train"]
    assert f"| `data.train` | `{sft_file}` | `{sha[:16]}` |" in card
    assert "| `train/loss` |" in card and "| `eval/loss` |" in card
    recipe_block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe_block)["train"]["max_steps"] == 2  # the recipe as it ran
    assert "## Evaluation" not in card  # a phase run alone has no eval table


def test_a_card_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path, capsys):
    from types import SimpleNamespace

    from alignment.model_card import write_model_card

    (tmp_path / "model").mkdir()
    odd = SimpleNamespace(output_dir=str(tmp_path))  # no `model`: the card cannot say what it started from
    assert write_model_card("rm", odd, tmp_path / "model") is None
    assert "[rm] warning: model card not written" in capsys.readouterr().out
    assert write_model_card("rm", odd, tmp_path / "missing") is None  # no model saved: no card, no warning
    assert capsys.readouterr().out == ""
