"""`pip install` of the built package gives a working `align`, away from this repository.

The package is built the way a user gets it: an sdist from a copy of the source, then a wheel from that sdist
(so both carry the recipes, the DeepSpeed configs and the license). The wheel goes into a fresh virtual
environment that borrows the dependencies already installed here through a ``.pth`` file (no download, no
index: ``--no-deps --no-index``) and never sees the source tree; every command runs from an empty folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What the build reads: the project file, the files it names (readme, license) and the packaged folders.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "alignment", "feedback_app", "recipes", "deepspeed_configs")
DATA = {"recipes": "alignment/recipes", "deepspeed_configs": "alignment/deepspeed_configs"}


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) \
        -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _source_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel built from it, from a copy of the source (the build writes egg-info and
    build/ next to the sources; never into the repository)."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    # The build backend's own hook (the `build` front end may not be installed; pip cannot make an sdist).
    sdist = _run([sys.executable, "-c", "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))",
                  str(root / "sdist")], cwd=src).stdout.strip().splitlines()[-1]
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
          "-w", str(root / "wheel"), str(root / "sdist" / sdist)], cwd=root)
    (wheel,) = (root / "wheel").glob("*.whl")
    return {"sdist": root / "sdist" / sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def venv(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fresh virtual environment with the wheel installed; its `align`, its python, an environment to run
    them in, and an empty working folder."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=root)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    # The dependencies installed here, visible there. Only site-packages folders: a source tree on this
    # interpreter's sys.path (pytest's pythonpath, an editable install's finder) stays out, since directories
    # that a .pth file adds do not have their own .pth files run.
    (purelib / "_borrowed_dependencies.pth").write_text(
        "".join(f"{p}\n" for p in site.getsitepackages() if Path(p).is_dir()), encoding="utf-8")
    python = env_dir / "bin" / "python"
    # --ignore-installed: the distribution may be installed here (editable); pip must not try to remove it.
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
          str(built["wheel"])], cwd=root)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true", TOKENIZERS_PARALLELISM="false")
    work = root / "work"  # an empty folder: nothing of the repository around the commands
    work.mkdir()
    return {"dir": env_dir, "python": python, "align": env_dir / "bin" / "align", "env": env, "work": work}


def test_the_sdist_and_the_wheel_carry_the_data_the_license_and_every_package(built):
    with tarfile.open(built["sdist"]) as tar:
        sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    with zipfile.ZipFile(built["wheel"]) as whl:
        wheel = set(whl.namelist())
        (meta,) = [n for n in wheel if n.endswith(".dist-info/METADATA")]
        metadata = whl.read(meta).decode()
    assert "LICENSE" in sdist and any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel)
    assert re.search(r"^Name: alignment-loop$", metadata, re.M)
    assert re.search(r"^License-Expression: Apache-2.0$", metadata, re.M)
    assert re.search(r"^Requires-Dist: trl>=", metadata, re.M)
    for folder, packaged in DATA.items():
        files = [p.relative_to(REPO / folder).as_posix() for p in _source_files(REPO / folder)]
        assert files, folder
        assert {f"{folder}/{f}" for f in files} <= sdist, f"{folder}/ missing from the sdist"
        missing = sorted(f for f in files if f"{packaged}/{f}" not in wheel)
        assert not missing, f"not in the wheel under {packaged}/: {missing}"
    # every Python file of both packages (a subpackage left out of pyproject's list would be missing here)
    modules = [p.relative_to(REPO).as_posix() for name in ("alignment", "feedback_app")
               for p in _source_files(REPO / name) if p.suffix == ".py"]
    assert sorted(m for m in modules if m not in wheel) == []
    assert [n for n in wheel if n.startswith("feedback_app/assets/")]


def test_align_help_and_version(venv):
    assert not (venv["work"] / "alignment").exists()
    where = _run([str(venv["python"]), "-c", "import alignment, feedback_app; print(alignment.__file__); "
                  "print(feedback_app.__file__)"], venv["work"], venv["env"]).stdout.split()
    assert all(Path(p).is_relative_to(venv["dir"]) for p in where), f"imported from outside the new venv: {where}"
    assert "usage: align" in _run([str(venv["align"]), "--help"], venv["work"], venv["env"]).stdout
    version = _run([str(venv["align"]), "--version"], venv["work"], venv["env"])
    assert re.fullmatch(r"align \d+(\.\d+)+\S*", (version.stdout + version.stderr).strip()), version


def test_data_validate_from_any_folder(venv, tiny_model_dir):
    data = venv["work"] / "sft.jsonl"
    shutil.copy(REPO / "recipes" / "quickstart" / "data" / "sft.jsonl", data)
    proc = _run([str(venv["align"]), "data", "validate", str(data), "--kind", "sft", "--model", str(tiny_model_dir)],
                venv["work"], venv["env"])
    assert f"{data}: OK, " in proc.stdout


PROBE = """
import json
from importlib.resources import files

from alignment.distributed import resolve_config_path
from alignment.pipeline import QUICKSTART, load_pipeline

cfg = load_pipeline(QUICKSTART, [])
print(json.dumps({
    "sft_recipe": str(files("alignment") / "recipes" / "quickstart" / "sft.yaml"),
    "quickstart": str(QUICKSTART),
    "zero2": str(resolve_config_path("zero2")),
    "phase_recipes": [s.recipe for s in cfg.phases if s.recipe],
    "evaluation": [cfg.evaluation.prompts, cfg.evaluation.policies],
    "output_dir": cfg.output_dir,
}))
"""


@pytest.fixture(scope="module")
def packaged(venv) -> dict:
    """Where the installed package finds its recipes and DeepSpeed configs (asked from the empty folder)."""
    return json.loads(_run([str(venv["python"]), "-c", PROBE], venv["work"], venv["env"]).stdout.splitlines()[-1])


def test_quickstart_and_deepspeed_configs_come_from_the_package(venv, packaged):
    inside = [packaged["sft_recipe"], packaged["quickstart"], packaged["zero2"], *packaged["phase_recipes"],
              *packaged["evaluation"]]
    assert all(Path(p).is_file() and Path(p).is_relative_to(venv["dir"]) for p in inside), packaged
    assert packaged["output_dir"] == "runs/quickstart"  # `align quickstart` writes under the working folder


def test_sft_with_the_packaged_recipe(venv, packaged, tiny_model_dir):
    out = venv["work"] / "sft"
    _run([str(venv["align"]), "sft", "--config", packaged["sft_recipe"], f"model={tiny_model_dir}",
          f"output_dir={out}", "train.max_steps=2", "train.batch_size=2", "train.bf16=false", "data.max_length=96",
          "tracking.backends=[none]"], venv["work"], venv["env"])
    assert (out / "model" / "model.safetensors").is_file()
    # the recipe's relative data path was read from the installed package, next to the recipe
    config = (out / "config.yaml").read_text(encoding="utf-8")
    assert str(Path(packaged["sft_recipe"]).parent / "data" / "sft.jsonl") in config


def test_a_named_deepspeed_config_runs_from_the_package(venv, packaged, tiny_model_dir):
    """One process through DeepSpeed's launcher, as `align sft --deepspeed zero2` starts it."""
    out = venv["work"] / "sft-zero2"
    proc = _run([str(venv["align"]), "sft", "--config", packaged["sft_recipe"], "--deepspeed", "zero2",
                 f"model={tiny_model_dir}", f"output_dir={out}", "train.max_steps=2", "train.batch_size=2",
                 "train.bf16=false", "data.max_length=96", "tracking.backends=[none]"], venv["work"], venv["env"])
    assert "deepspeed=zero2" in proc.stdout + proc.stderr
    assert (out / "model" / "model.safetensors").is_file()
