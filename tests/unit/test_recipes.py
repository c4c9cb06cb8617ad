"""Every YAML under recipes/ (recursively) loads and validates, says how to launch it, and finds its data.

A new recipe is covered the moment it is added: a YAML file this test cannot classify as a pipeline
(`phases:`), a phase recipe (`phase:`) or a policies file (`policies.yaml`) fails.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from alignment.cli import build_parser
from alignment.config import load_config
from alignment.default_model import DEFAULT_MODEL_ALIAS
from alignment.evaluation.rules import load_rules
from alignment.phases import PHASES
from alignment.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
FILES = sorted([*RECIPES.rglob("*.yaml"), *RECIPES.rglob("*.yml")])
IDS = [str(p.relative_to(RECIPES)) for p in FILES]


def kind_of(path: Path) -> str:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "phases" in data:
        return "pipeline"
    if isinstance(data, dict) and "phase" in data:
        return "phase"
    if path.name == "policies.yaml":
        return "policies"
    return "unknown"


LAUNCHABLE = [p for p in FILES if kind_of(p) in ("pipeline", "phase")]


def test_recipes_are_found():
    assert FILES, f"no YAML under {RECIPES}"
    assert LAUNCHABLE, "no pipeline or phase recipe"


def check_model(value: str) -> None:
    """A recipe's model is the embedded alias, an earlier phase (@name) or an existing local folder."""
    # or the output of an earlier phase of the same recipe folder (run the phases in order)
    produced = value.startswith("runs/") and value.endswith("/model")
    assert value.lower() == DEFAULT_MODEL_ALIAS or value.startswith("@") or produced or Path(value).is_dir(), value


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_recipe_loads_and_validates(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    kind = kind_of(path)
    if kind == "pipeline":
        cfg = load_pipeline(path, [])
        check_model(cfg.model)
        for step in cfg.phases:
            if step.kind in PHASES:
                # the phase recipe with the pipeline's own overrides on top, as run_pipeline loads it
                phase_cfg = load_config(PHASES[step.kind].config, step.recipe, step.overrides)
                assert phase_cfg.phase == step.kind, f"{step.recipe} is not a '{step.kind}' recipe"
        if any(step.kind == "eval" for step in cfg.phases):
            assert load_rules(cfg.evaluation.policies)
    elif kind == "phase":
        phase = yaml.safe_load(path.read_text(encoding="utf-8"))["phase"]
        assert phase in PHASES, f"unknown phase '{phase}'"
        cfg = load_config(PHASES[phase].config, path)
        check_model(cfg.model)
    elif kind == "policies":
        assert load_rules(path)
    else:
        pytest.fail(f"{path}: not a pipeline (phases:), a phase recipe (phase:) or a policies.yaml; "
                    "teach tests/unit/test_recipes.py how to validate it")


@pytest.mark.parametrize("path", LAUNCHABLE, ids=[str(p.relative_to(RECIPES)) for p in LAUNCHABLE])
def test_first_line_is_the_launch_command(path: Path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#"), f"{path}: the first line should be a comment with the launch command"
    assert "align " in first
    # the command runs until a run of spaces (what follows is commentary)
    command = first.lstrip("#").strip().split("  ")[0]
    argv = shlex.split(command)
    assert argv[0] == "align", first
    args = build_parser().parse_args(argv[1:])
    target = args.recipe if args.command == "run" else args.config
    assert (REPO / target).resolve() == path.resolve(), f"{first!r} launches {target}, not this file"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert args.command in ("run", data.get("phase")), f"{first!r} does not launch a '{data.get('phase')}'"


@pytest.mark.parametrize("path", LAUNCHABLE, ids=[str(p.relative_to(RECIPES)) for p in LAUNCHABLE])
def test_every_referenced_path_exists(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # paths must resolve from the recipe's folder, not from where pytest runs
    if kind_of(path) == "pipeline":
        cfg = load_pipeline(path, [])
        referenced = [step.recipe for step in cfg.phases if step.recipe]
        referenced += [v for v in (cfg.evaluation.prompts, cfg.evaluation.policies) if v]
    else:
        phase = yaml.safe_load(path.read_text(encoding="utf-8"))["phase"]
        cfg = load_config(PHASES[phase].config, path)
        referenced = [v for v in (cfg.data.train, getattr(cfg.data, "validation", None)) if v]
    assert referenced
    for value in referenced:
        assert Path(value).exists(), f"{path} refers to {value}, which does not exist next to it"
