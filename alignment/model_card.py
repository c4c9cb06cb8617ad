"""A model card (``README.md``) beside every saved model, and an adapter whose base is named portably.

What someone handed the folder needs to know without the run that made it: which phase trained it from
which model, on which data files (with their content hashes, so a changed file shows), the recipe as it
ran, the last training and held-out metrics, the test-split scores and the early-stopping point when the
phase had them, and, after a pipeline's eval phase, the adherence table. The card is written by the process
that trained the model (rank 0) once the phase has returned (its model saved, its test_metrics.json and
early_stopping.json written); a card that cannot be written is a warning, never a failed phase.

A LoRA adapter's ``adapter_config.json`` names its base model by the path it was loaded from, an absolute
path of the training machine. When the recipe named the base by an alias of ours (the embedded default
model) or by a Hugging Face hub id, that name is what the adapter records instead, so the folder loads on
another machine that has the same base.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from alignment.data.fingerprint import config_sources, data_fingerprint
from alignment.log import get_logger

_log = get_logger("model_card")

CARD = "README.md"


def portable_base(model: str) -> str | None:
    """The name an adapter should record for its base ``model`` (a recipe's ``model``), or None to keep the
    path: our aliases and hub ids (``org/name`` that is no local folder) travel; local folders do not."""
    from alignment.default_model import DEFAULT_MODEL_ALIAS, HUB_ID

    if model == DEFAULT_MODEL_ALIAS:
        return model
    return model if HUB_ID.fullmatch(model) and not Path(model).exists() else None


def make_adapter_portable(model_dir: Path, base: str) -> bool:
    """Rewrite an adapter's ``base_model_name_or_path`` to ``portable_base(base)``; True when it changed."""
    config = model_dir / "adapter_config.json"
    name = portable_base(base)
    if not config.exists() or name is None:
        return False
    data = json.loads(config.read_text())
    if data.get("base_model_name_or_path") == name:
        return False
    data["base_model_name_or_path"] = name
    config.write_text(json.dumps(data, indent=2) + "\n")
    return True


def _last_metrics(out: Path) -> dict[str, float]:
    """The last value of every metric in ``metrics.jsonl`` (train, eval, objective...), by name."""
    from alignment.tracking import read_metrics

    path = out / "metrics.jsonl"
    last: dict[str, float] = {}
    if path.exists():
        for row in read_metrics(path):
            last.update({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))})
    return last


KEY_METRICS = ("train/loss", "eval/loss", "eval/accuracy", "eval/rewards/accuracies", "eval/rewards/margins",
               "objective/scores", "objective/kl")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _test_lines(out: Path) -> list[str]:
    """The card's "Test split" section from the phase's test_metrics.json ([] without a test set): the saved
    model's scores on the held-out test examples. The phases write it before they return, so it exists when
    the card is written."""
    from alignment.run import TEST_METRICS_FILE

    test = _read_json(out / TEST_METRICS_FILE)
    if not test:
        return []
    shown = {k: v for k, v in test.items() if k.startswith("test/") and isinstance(v, (int, float))}
    return ["", "## Test split", "", f"Scored once after training, with this model, on {test.get('examples')} "
            "held-out test examples never trained on nor used for validation or early stopping.", "",
            "| metric | value |", "|---|---|", *(f"| `{k}` | {v:.4g} |" for k, v in shown.items())]


def _early_stopping_lines(out: Path) -> list[str]:
    """The card's "Early stopping" section from the phase's early_stopping.json ([] when it ran without)."""
    from alignment.early_stopping import REPORT_FILE

    saved = _read_json(out / REPORT_FILE)
    if not saved:
        return []
    best, value, stopped = saved.get("best_step"), saved.get("best_value"), saved.get("stopped_at_step")
    kept = (f"the model of step {best} ({saved['metric']} {value:.4g}, the best evaluated)" if best is not None
            and value is not None else f"the last one (no finite {saved['metric']} was measured)")
    ended = (f"stopped at step {stopped}: no improvement in {saved.get('patience')} evaluations" if stopped is not None
             else "ran to its last step (it did not stop early)")
    return ["", "## Early stopping", "", f"On `{saved['metric']}` ({saved.get('mode')}): training {ended}; this is "
            f"{kept}."]


def card_text(kind: str, cfg: Any, model_dir: Path, evaluation: str | None = None) -> str:
    """The card's Markdown (see the module docstring)."""
    import yaml

    from alignment.config import to_dict

    out = Path(cfg.output_dir)
    sources = config_sources(cfg)
    hashes = data_fingerprint(sources) if sources else {}
    metrics = _last_metrics(out)
    lines = [f"# {out.name}: {kind} model", "",
             f"Trained by `align {kind}` on {datetime.date.today().isoformat()}.", "",
             "| | |", "|---|---|", f"| phase | `{kind}` |", f"| started from | `{cfg.model}` |"]
    for field in ("reward_model", "ref_model"):
        value = getattr(cfg, field, None)
        if value:
            lines.append(f"| {field.replace('_', ' ')} | `{value}` |")
    adapter = (model_dir / "adapter_config.json").exists()
    lines.append(f"| weights | {'LoRA adapter on the model above' if adapter else 'full model'} |")
    lines += ["", "## Data", ""]
    if sources:
        lines += ["| field | file | sha256 (content) |", "|---|---|---|"]
        lines += [f"| `{name}` | `{path}` | `{hashes.get(name, '')[:16]}` |" for name, path in sources.items()]
    else:
        lines.append("No data file is named in the recipe.")
    shown = [k for k in KEY_METRICS if k in metrics]
    lines += ["", "## Metrics (last logged value)", ""]
    if shown:
        lines += ["| metric | value |", "|---|---|"] + [f"| `{k}` | {metrics[k]:.4g} |" for k in shown]
    else:
        lines.append("No metrics were logged.")
    lines += _test_lines(out) + _early_stopping_lines(out)
    if evaluation:
        lines += ["", "## Evaluation", "", "```", evaluation.rstrip(), "```"]
    lines += ["", "## Recipe, as it ran", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(lines)


def write_model_card(kind: str, cfg: Any, model_dir: Path, evaluation: str | None = None) -> Path | None:
    """``model_dir/README.md``, and a portable base name in an adapter's config; None when it failed (a
    warning is printed: the model itself is saved)."""
    if not model_dir.is_dir():
        return None  # nothing saved: nothing to describe
    try:
        make_adapter_portable(model_dir, str(cfg.model))
        path = model_dir / CARD
        path.write_text(card_text(kind, cfg, model_dir, evaluation), encoding="utf-8")
        return path
    except Exception as e:  # noqa: BLE001 - the card describes a saved model; it must never fail the phase
        _log.warning(f"[{kind}] warning: model card not written ({type(e).__name__}: {e}); the model is saved")
        return None
