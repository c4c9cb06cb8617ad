"""Models that load only with the right options: every path that loads a model for inference (`align eval`, a
pipeline's eval phase, merged LoRA weights, the feedback app's candidates, head-to-head answers and scoring)
loads it with the options it is given, and a model that ships its own code is refused, in one line naming the
switch, unless remote code is trusted."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from alignment.cli import main
from alignment.config import ModelOptions
from alignment.errors import AlignError
from alignment.pipeline import EvaluationConfig
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart"

# The modelling code a model folder ships: transformers imports it only under trust_remote_code.
CUSTOM_CODE = '''from transformers import LlamaConfig, LlamaForCausalLM


class CustomLMConfig(LlamaConfig):
    model_type = "align_test_custom"


class CustomLMForCausalLM(LlamaForCausalLM):
    config_class = CustomLMConfig
'''


@pytest.fixture(scope="module")
def custom_code_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model with other weights (its answers differ from the tiny model's), declared as an architecture
    of its own whose code lies in the folder."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("custom-code") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(out))
    (out / "custom_lm.py").write_text(CUSTOM_CODE)
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="align_test_custom", architectures=["CustomLMForCausalLM"],
                  auto_map={"AutoConfig": "custom_lm.CustomLMConfig",
                            "AutoModelForCausalLM": "custom_lm.CustomLMForCausalLM"})
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_a_model_with_its_own_code_loads_only_when_trusted(custom_code_model):
    from alignment.modeling import load_causal_lm

    with pytest.raises(AlignError) as e:
        load_causal_lm(custom_code_model)
    assert e.value.file == str(custom_code_model / "config.json") and e.value.field == "auto_map"
    assert "--trust-remote-code" in str(e.value) and "model_options.trust_remote_code" in str(e.value)
    model = load_causal_lm(custom_code_model, options=ModelOptions(trust_remote_code=True))
    assert type(model).__name__ == "CustomLMForCausalLM"


def test_command_line_options_are_none_unless_given():
    parser = argparse.ArgumentParser()
    ModelOptions.add_arguments(parser)
    assert ModelOptions.from_arguments(parser.parse_args([])) is None
    assert ModelOptions.from_arguments(parser.parse_args(["--trust-remote-code"])) == ModelOptions(
        trust_remote_code=True)
    assert ModelOptions.from_arguments(parser.parse_args(["--dtype", "bfloat16", "--attn-implementation", "eager"])) \
        == ModelOptions(dtype="bfloat16", attn_implementation="eager")


def test_evaluation_model_options_null_means_inherit():
    from alignment.config import build

    assert build(EvaluationConfig, {"model_options": None}).model_options is None
    assert build(EvaluationConfig, {}).model_options is None
    assert build(EvaluationConfig, {"model_options": {"dtype": "bfloat16"}}).model_options == ModelOptions(
        dtype="bfloat16")
    with pytest.raises(AlignError, match="model_options.dtpye"):
        build(EvaluationConfig, {"model_options": {"dtpye": "bfloat16"}})


def test_align_eval_loads_with_the_options_given(tmp_path, custom_code_model, capsys):
    prompts = str(QUICKSTART / "data" / "heldout_prompts.jsonl")
    base = ["eval", "--model", str(custom_code_model), "--prompts", prompts, "--policies",
            str(QUICKSTART / "policies.yaml"), "--max-new-tokens", "3", "--batch-size", "66"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert f"{custom_code_model / 'config.json'}" in err and "--trust-remote-code" in err and "Traceback" not in err
    out = tmp_path / "eval.json"
    cache = tmp_path / "cache"
    assert main([*base, "--trust-remote-code", "--cache", str(cache), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["results"][0]["answers"]) == 66
    (cached,) = cache.glob("*.json")
    first_key = json.loads(cached.read_text())["key"]
    # another dtype gives other answers: they are generated again, not taken from the cache
    assert main([*base, "--trust-remote-code", "--dtype", "bfloat16", "--cache", str(cache)]) == 0
    assert json.loads(cached.read_text())["key"] != first_key


def test_pipeline_eval_and_merged_weights_load_like_the_training_phase(tmp_path, custom_code_model, sft_file,
                                                                       capsys):
    runs = tmp_path / "runs"
    recipe = {
        "name": "custom", "output_dir": str(runs), "model": str(custom_code_model),
        "phases": [
            {"name": "sft", "kind": "sft", "recipe": str(QUICKSTART / "sft.yaml"),
             "overrides": {"data.train": str(sft_file), "data.max_length": 64, "train.max_steps": 1,
                           "train.batch_size": 2, "train.eval_every": 0, "train.save_every": 0,
                           "train.bf16": "false", "tracking.backends": ["none"], "lora.enabled": True,
                           "lora.save_merged": True, "model_options.trust_remote_code": True}},
            {"name": "eval", "kind": "eval"},
        ],
        "evaluation": {"prompts": str(QUICKSTART / "data" / "heldout_prompts.jsonl"),
                       "policies": str(QUICKSTART / "policies.yaml"), "max_new_tokens": 3, "batch_size": 66},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["run", str(path)]) == 0
    results = json.loads((runs / "eval" / "results.json").read_text())["results"]
    assert [r["label"] for r in results] == ["base", "sft"]  # both needed the training phase's trust
    merged = runs / "sft" / "merged"
    assert (merged / "model.safetensors").exists()
    from alignment.modeling import load_causal_lm

    loaded = load_causal_lm(merged, options=ModelOptions(trust_remote_code=True))
    assert type(loaded).__name__ == "CustomLMForCausalLM" and loaded.dtype == torch.float32

    # The eval phase's own options win: without trust it refuses the model, naming the switch.
    recipe["evaluation"]["model_options"] = {"trust_remote_code": False}
    path.write_text(json.dumps(recipe))
    capsys.readouterr()
    assert main(["run", str(path)]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err


def test_the_app_generates_and_scores_with_the_server_options(tmp_path, custom_code_model, tiny_model_dir,
                                                              tiny_rm_dir, capsys):
    from feedback_app.candidates import GenerationSettings, generate_candidates
    from feedback_app.store import Store

    db = tmp_path / "feedback.db"
    store = Store(db)
    p = store.ensure_project()
    store.add_prompts(p.id, [[{"role": "user", "content": f"Tell me about item {i}"}] for i in range(3)])
    admin = store.add_user("boss", "admin", "password-1")
    settings = GenerationSettings(model=str(custom_code_model), k=2, temperature=1.0, max_new_tokens=4)
    with pytest.raises(AlignError, match="trust"):
        generate_candidates(store, p.id, settings, store.create_job(p.id, "generate", {}, admin.id, 6))
    settings.options = ModelOptions(trust_remote_code=True)
    assert generate_candidates(store, p.id, settings, store.create_job(p.id, "generate", {}, admin.id, 6)) > 0

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}?"} for i in range(3)])
    create = ["feedback", "h2h", "create", "--store", str(db), "--project", "h2h", "--prompts", str(prompts),
              "--baseline", str(custom_code_model), "--challenger", str(tiny_model_dir), "--max-new-tokens", "4",
              "--temperature", "1.0"]
    assert main(create) == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert main([*create, "--trust-remote-code"]) == 0
    assert len(store.project_items(store.project("h2h").id)) > 0
    assert main(["feedback", "score", "--store", str(db), "--reward-model", str(tiny_rm_dir),
                 "--dtype", "bfloat16"]) == 0
    store.close()


def test_data_validate_counts_tokens_with_a_trusted_tokenizer(custom_code_model, sft_file, capsys):
    assert main(["data", "validate", str(sft_file), "--kind", "sft", "--model", str(custom_code_model),
                 "--trust-remote-code"]) == 0
    assert "tokens per sequence" in capsys.readouterr().out


def test_shipped_code_for_a_built_in_architecture_loads_without_trust(tmp_path, tiny_model_dir):
    """transformers uses its own Llama code for a Llama folder that also ships code (many hub models do): so do
    we, with no refusal."""
    from alignment.modeling import load_causal_lm

    folder = tmp_path / "llama-with-code"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    assert type(load_causal_lm(folder)).__name__ == "LlamaForCausalLM"


def test_the_eval_phase_inherits_remote_code_and_kernel_but_not_a_lower_dtype():
    from alignment.pipeline import _inherited

    trained = ModelOptions(dtype="bfloat16", attn_implementation="eager", trust_remote_code=True)
    assert _inherited(trained) == ModelOptions(dtype="float32", attn_implementation="eager", trust_remote_code=True)
    assert _inherited(None) is None
