"""Scoring a project's candidates with a reward model (``align feedback score``).

Every candidate is scored as the reward model was trained and as ``align eval`` scores answers
(:func:`alignment.evaluation.judge.score_answers`): ``prompt + answer`` rendered with the tokenizer's chat
template, the score read at the last real token. The scores go to the store in one transaction with the
reward model's identity (its directory and a SHA-256 of its weights files), replacing the project's previous
scores; a project with "serve uncertain first" on then claims the items whose two best answers the reward
model can tell apart least first (:meth:`feedback_app.store.Store.uncertainty`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from alignment.config import ModelOptions
from alignment.errors import AlignError
from feedback_app.store import Store, StoreError

# The file names a model directory keeps its weights under (full models and LoRA adapters, safetensors or
# PyTorch pickles, sharded or not). Not every ``*.bin``: ``training_args.bin`` holds no weights.
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "adapter_model*.bin")
DEFAULT_MAX_LENGTH = 4096  # tokens of prompt + answer, as ``align eval`` scores (longer ones are truncated)


@dataclass(frozen=True)
class ScoringResult:
    candidates: int  # scores stored
    items: int  # items with at least one scored candidate
    truncated: int  # prompt + answer longer than max_length, scored on their first max_length tokens
    reward_model: str  # the directory the reward model was loaded from
    weights_sha256: str
    seconds: float


def weight_files(model_dir: Path, field: str = "--reward-model") -> list[Path]:
    """The weights files of a model directory, in name order; an AlignError naming the directory (and ``field``,
    the option or recipe key that named it) if none."""
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in model_dir.glob(pattern) if p.is_file()})
    if not files:
        raise AlignError(f"no weights file ({', '.join(WEIGHT_PATTERNS)}) in the model directory",
                         file=model_dir, field=field)
    return files


def weights_sha256(model_dir: Path, field: str = "--reward-model") -> str:
    """SHA-256 over the name and content of every weights file of ``model_dir``: the same weights hash the
    same wherever the directory lies, and another training run into the same directory hashes differently.

    The one weights hash of the app: reward-model scores, the models that wrote candidates and the lineage.json
    of trained models all use it, so one set of weights has one identity everywhere."""
    from alignment.data.fingerprint import file_digest

    digest = hashlib.sha256()
    for path in weight_files(Path(model_dir), field):
        digest.update(path.name.encode() + b"\0")
        file_digest(path, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def score_project(store: Store, project_id: int, reward_model: str, *, batch_size: int = 16,
                  max_length: int = DEFAULT_MAX_LENGTH, progress: bool = True,
                  options: ModelOptions | None = None) -> ScoringResult:
    """Score every candidate of the project with ``reward_model`` (a directory trained by ``align rm``) and
    store the scores, replacing the project's previous ones. Batched, shortest texts together; a progress bar
    on stderr unless ``progress`` is False.

    Bad arguments raise before the model loads: an AlignError naming ``--reward-model``, ``--batch-size`` or
    ``--max-length``, a StoreError for a project without candidates."""
    import torch
    from tqdm.auto import tqdm

    from alignment.evaluation.judge import check_reward_model, score_answers
    from alignment.modeling import load_reward_model, load_tokenizer

    if batch_size < 1:
        raise AlignError(f"must be at least 1, not {batch_size}", field="--batch-size")
    if max_length < 2:
        raise AlignError(f"must be at least 2 tokens, not {max_length}", field="--max-length")
    path = check_reward_model(reward_model).resolve()  # refuses a causal LM: its score head would be random
    digest = weights_sha256(path)
    rows = store.project_candidates(project_id)
    if not rows:
        raise StoreError(f"project {project_id} has no candidates to score; generate or import them first")
    start = time.monotonic()
    tokenizer = load_tokenizer(path, options)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_reward_model(path, options=options).eval().requires_grad_(False).to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    # Texts of similar length share a batch (less padding); characters are a good enough proxy for tokens.
    order = sorted(range(len(rows)), key=lambda i: sum(len(m["content"]) for m in rows[i][1]) + len(rows[i][3]))
    scores: dict[int, float] = {}
    truncated = 0
    with tqdm(total=len(rows), desc="scoring candidates", unit="answer", disable=not progress) as bar:
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            got, cut = score_answers(model, tokenizer, [rows[i][1] for i in batch], [rows[i][3] for i in batch],
                                     batch_size=batch_size, max_length=max_length)
            for i, score in zip(batch, got):
                scores[rows[i][2]] = score
            truncated += cut
            bar.update(len(batch))
    del model
    n = store.replace_scores(project_id, scores, reward_model=str(path), weights_sha256=digest)
    return ScoringResult(n, len({item_id for item_id, _, _, _ in rows}), truncated, str(path), digest,
                         time.monotonic() - start)
