"""A hub id (org/name) is read from the local Hugging Face cache, where HF_HUB_CACHE / HF_HOME say it is;
nothing is downloaded, and a model missing from the cache is one clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alignment.default_model import hub_cache_dir, resolve_model_path
from alignment.errors import AlignError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_with(root: Path, repo_id: str, model_dir: Path) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/files}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_a_cached_hub_id_loads_from_the_cache(tmp_path, tiny_model_dir, monkeypatch):
    from alignment.modeling import load_causal_lm, load_tokenizer

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    snapshot = _cache_with(tmp_path / "hf" / "hub", "acme/tiny-chat", tiny_model_dir)
    assert resolve_model_path("acme/tiny-chat") == snapshot
    monkeypatch.chdir(tmp_path)  # no folder named acme/ here: the id is not a relative path
    assert load_causal_lm("acme/tiny-chat").config.num_hidden_layers >= 1
    assert load_tokenizer("acme/tiny-chat").eos_token == "<|im_end|>"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # HF_HUB_CACHE wins over HF_HOME
    with pytest.raises(AlignError, match="not in the local Hugging Face cache"):
        resolve_model_path("acme/tiny-chat")


def test_a_hub_id_missing_from_the_cache_is_one_error_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(AlignError) as e:
        resolve_model_path("acme/not-here", file="recipe.yaml", field="model")
    message = str(e.value)
    assert "acme/not-here" in message and str(tmp_path / "empty") in message and "never downloads" in message
    assert e.value.field == "model"


def test_a_local_folder_wins_over_a_hub_id_of_the_same_name(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "acme" / "tiny-chat")
    assert resolve_model_path("acme/tiny-chat") == Path("acme/tiny-chat")
