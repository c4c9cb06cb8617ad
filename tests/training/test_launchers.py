"""Every launcher runs the same training as one process with the whole batch.

`align sft --num-processes 2`, torchrun (with and without DeepSpeed), `accelerate launch` and DeepSpeed's
launcher started directly, on two CPU processes: each run matches one process with twice the batch (loss,
gradient norm and tokens per step, and the saved weights), the ranks end with the same weights (hashed by
a probe under DeepSpeed's launcher), exactly one group of ranks trains (no launcher inside a launcher), and
a hang fails the test instead of blocking it. A process started by a launcher with a different
`--num-processes` stops with one clear error.

Run as a module (``python -m tests.training.test_launchers sft ...``) this file is `align` with a probe: before
the model is saved, every rank writes a hash of its parameters to $ALIGN_TEST_PROBE_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 480  # seconds per multi-process run; these take well under a minute on an idle 2-core machine
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "ALIGN_WORKER")


def _data(path: Path) -> Path:
    rows = [{"messages": [
        {"role": "user", "content": f"Question number {i}: how do I reset item {i % 7}?"},
        {"role": "assistant", "content": f"Open settings, choose item {i % 7}, press reset. Ticket {i}."},
    ]} for i in range(32)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _recipe(folder: Path, model: Path, data: Path, batch_size: int) -> Path:
    """Three steps of 8 examples: 2 micro-batches of `batch_size` per process (4 for one process, 2 for two)."""
    recipe = {"phase": "sft", "model": str(model), "output_dir": str(folder / "out"),
              "data": {"train": str(data), "max_length": 64},
              "train": {"max_steps": 3, "batch_size": batch_size, "grad_accum": 2, "lr": 3e-3, "warmup_ratio": 0,
                        "save_every": 0, "eval_every": 0, "bf16": "false"},
              "tracking": {"backends": ["none"]}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is valid YAML
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env.update({"WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO)}, **extra)
    return env


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `cmd`; past TIMEOUT kill it and every process under it (launchers start workers in sessions of
    their own, so its process group is not enough) and fail."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a pipe still held open by a process that left the tree
            out = err = ""
        pytest.fail(f"hung: no exit within {TIMEOUT}s\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_tree(pid: int) -> None:
    """Stop the process and everything under it (a stopped process starts no more), then kill them all."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    stopped: dict[int, psutil.Process] = {}
    while True:
        try:
            new = [p for p in [root, *root.children(recursive=True)] if p.pid not in stopped]
        except psutil.NoSuchProcess:
            break
        if not new:
            break
        for p in new:
            stopped[p.pid] = p
            try:
                p.suspend()
            except psutil.NoSuchProcess:
                pass
    for p in stopped.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(stopped.values()), timeout=10)


def _free_port() -> str:
    from alignment.distributed import free_port

    return str(free_port())


def _metrics(out: Path) -> list[dict]:
    from alignment.tracking import read_metrics

    return [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """The data, and the one-process run with the whole batch that every 2-process run must match."""
    from alignment.cli import main

    root = tmp_path_factory.mktemp("launchers")
    data = _data(root / "sft.jsonl")
    one = root / "one"
    assert main(["sft", "--config", str(_recipe(one, tiny_model_dir, data, batch_size=4))]) == 0
    return {"root": root, "data": data, "model": tiny_model_dir, "one": one / "out"}


def _assert_same_training(run: Path, one: Path, norm_rel: float = 1e-4) -> None:
    """Loss, gradient norm and tokens of every step, and the saved weights, as the one-process run's.
    (Those runs differ by about 1e-7 in the loss and 3e-6 in the weights; ranks that trained apart differ
    by about lr = 3e-3. DeepSpeed reports a gradient norm about 1e-4 apart: ``norm_rel``.)"""
    import torch

    a, b = _metrics(one), _metrics(run)
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert rb["train/tokens"] == ra["train/tokens"], ra["step"]
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=1e-5), ra["step"]
        assert rb["train/grad_norm"] == pytest.approx(ra["train/grad_norm"], rel=norm_rel), ra["step"]
    wa, wb = _weights(one / "model"), _weights(run / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


def _assert_ranks_agree(probe: Path) -> None:
    hashes = {p.name: p.read_text() for p in probe.glob("rank*.sha256")}
    assert sorted(hashes) == ["rank0.sha256", "rank1.sha256"], hashes
    assert len(set(hashes.values())) == 1, f"the ranks hold different weights: {hashes}"


def _assert_one_group(proc: subprocess.CompletedProcess) -> None:
    """Exactly one rank 0 logged the model line, and it saw two processes (a nested launcher would log more)."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[sft] model ")]
    assert len(lines) == 1 and "processes=2;" in lines[0], proc.stdout[-3000:]
    assert len([line for line in proc.stdout.splitlines() if "memory allocator:" in line]) == 1


@pytest.mark.slow
def test_num_processes_without_deepspeed_is_data_parallel(setup):
    """`align sft --num-processes 2` (DeepSpeed's launcher, plain torch engine) trains one model, not two."""
    folder = setup["root"] / "align-np2"
    recipe = _recipe(folder, setup["model"], setup["data"], batch_size=2)
    proc = _run([sys.executable, "-m", "alignment.cli", "sft", "--config", str(recipe), "--num-processes", "2"],
                _env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_one_group(proc)
    assert "deepspeed=off" in proc.stdout
    _assert_same_training(folder / "out", setup["one"])


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", [None, "zero2"])
def test_torchrun(setup, deepspeed):
    """torchrun starts the ranks; `align` runs its rank and launches nothing. DS_ACCELERATOR is left unset:
    the worker sets it on a machine without CUDA."""
    folder = setup["root"] / f"torchrun-{deepspeed or 'plain'}"
    recipe = _recipe(folder, setup["model"], setup["data"], batch_size=2)
    shm = Path("/dev/shm")
    buffers_before = set(shm.glob("deepspeed_allreduce_buffer_*"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", _free_port(), "-m", "alignment.cli", "sft", "--config", str(recipe)]
    env = _env()
    env.pop("DS_ACCELERATOR", None)
    proc = _run(cmd + (["--deepspeed", deepspeed] if deepspeed else []), env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_one_group(proc)
    assert f"deepspeed={deepspeed or 'off'}" in proc.stdout
    assert "deepspeed.launcher" not in proc.stdout + proc.stderr
    _assert_same_training(folder / "out", setup["one"], norm_rel=1e-3 if deepspeed else 1e-4)
    assert set(shm.glob("deepspeed_allreduce_buffer_*")) <= buffers_before


@pytest.mark.slow
def test_accelerate_launch(setup):
    """`accelerate launch --multi_gpu` (torchrun underneath; on CPU too) runs the same training."""
    folder = setup["root"] / "accelerate"
    recipe = _recipe(folder, setup["model"], setup["data"], batch_size=2)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           _free_port(), "-m", "alignment.cli", "sft", "--config", str(recipe)]
    proc = _run(cmd, _env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_one_group(proc)
    _assert_same_training(folder / "out", setup["one"])


@pytest.mark.slow
def test_deepspeed_launcher_started_directly(setup):
    """`deepspeed --module alignment.cli sft ...` with the --num-processes it already has: no relaunch."""
    folder = setup["root"] / "ds-launcher"
    recipe = _recipe(folder, setup["model"], setup["data"], batch_size=2)
    probe = folder / "probe"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank", "--num_gpus", "2",
           "--master_addr", "127.0.0.1", "--master_port", _free_port(), "--module", "tests.training.test_launchers",
           "sft", "--config", str(recipe), "--num-processes", "2"]
    proc = _run(cmd, _env(DS_ACCELERATOR="cpu", ALIGN_TEST_PROBE_DIR=str(probe)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_one_group(proc)
    assert (proc.stdout + proc.stderr).count("cmd = ") == 1, "DeepSpeed's launcher ran more than once"
    _assert_ranks_agree(probe)
    _assert_same_training(folder / "out", setup["one"])


def test_num_processes_disagreeing_with_the_launcher_is_an_error(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from alignment import distributed
    from alignment.cli import main

    def no_launch(*args, **kwargs):
        raise AssertionError("a launched process started a launcher")

    monkeypatch.setattr(distributed, "launch", no_launch)
    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = _recipe(tmp_path, tiny_model_dir, _data(tmp_path / "sft.jsonl"), batch_size=2)
    assert main(["sft", "--config", str(recipe), "--num-processes", "4"]) == 2
    err = capsys.readouterr().err
    assert "--num-processes 4" in err and "WORLD_SIZE=2" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    # Per node: 2 nodes of 2 under torchrun (LOCAL_WORLD_SIZE) or DeepSpeed's launcher (LOCAL_SIZE) agree with 2.
    monkeypatch.setenv("WORLD_SIZE", "4")
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        monkeypatch.setenv(key, "2")
        distributed.check_launched(2)
        with pytest.raises(distributed.AlignError):
            distributed.check_launched(4)
        monkeypatch.delenv(key)


def _probe_main() -> None:
    """`align` with a probe: each rank hashes its parameters just before the final model is saved."""
    import hashlib

    from alignment import allocator, distributed
    from alignment.cli import main
    from alignment.training import Engine

    allocator.reexec_if_useful()
    gathered = Engine.gathered

    def probed(self):
        digest = hashlib.sha256()
        for name, p in sorted(self.module.named_parameters()):
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        probe = Path(os.environ["ALIGN_TEST_PROBE_DIR"])
        probe.mkdir(parents=True, exist_ok=True)
        (probe / f"rank{distributed.rank()}.sha256").write_text(digest.hexdigest())
        return gathered(self)

    Engine.gathered = probed
    raise SystemExit(main(sys.argv[1:]))


if __name__ == "__main__":  # a worker of test_deepspeed_launcher_started_directly
    _probe_main()
