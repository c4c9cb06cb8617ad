"""Two nodes, one process each, on one machine: Linux network namespaces joined by a veth pair
(`scripts/netns_nodes.sh up`). Each node starts its rank with the launchers' per-node modes (torchrun
`--nnodes 2 --node-rank N`, DeepSpeed's launcher `--no_ssh --node_rank N`), the ranks meet over the veth
addresses, and the trained model must equal the one a single-node 2-process run of the same recipe makes.

Needs root and the namespaces; skipped without them, unless ALIGN_TEST_REQUIRE_NETNS=1 (`.ci/run` sets the
namespaces up and this variable, so CI cannot skip them by accident).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
NODES = [("align-node0", "10.77.0.1", "an0"), ("align-node1", "10.77.0.2", "an1")]
TIMEOUT = 600


def _namespaces_ready() -> str | None:
    """None when both namespaces exist, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns exec)"
    try:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"iproute2 unavailable: {exc}"
    missing = [ns for ns, _, _ in NODES if ns not in listed.split()]
    return f"namespaces {missing} not set up (scripts/netns_nodes.sh up)" if missing else None


@pytest.fixture(scope="module", autouse=True)
def _nodes() -> None:
    why = _namespaces_ready()
    if why is not None:
        if os.environ.get("ALIGN_TEST_REQUIRE_NETNS") == "1":
            pytest.fail(f"ALIGN_TEST_REQUIRE_NETNS=1 but {why}")
        pytest.skip(why)


def _env(iface: str | None = None) -> dict[str, str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    if iface:
        env["GLOO_SOCKET_IFNAME"] = iface  # gloo would otherwise pick the namespace's loopback
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ALIGN_WORKER"):
        env.pop(key, None)
    return env


def _recipe(tmp_path: Path, phase: str, model: Path, data: Path, out: Path) -> Path:
    train = {"max_steps": 3, "batch_size": 2, "grad_accum": 1, "lr": 1e-3, "save_every": 0, "eval_every": 0,
             "bf16": "false", "warmup_ratio": 0.0}
    recipe = {"phase": phase, "model": str(model), "output_dir": str(out), "train": train,
              "data": {"train": str(data), "max_length": 64}, "tracking": {"backends": ["none"]}}
    if phase == "dpo":
        recipe.update(beta=0.1, precompute_ref=True)
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _check(procs: list[subprocess.Popen], what: str) -> None:
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"{what}: a node hung past {TIMEOUT} s")
        outputs.append(out)
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, f"{what}:\n{out[-4000:]}"


def _single_node(recipe: Path, phase: str, stage: str) -> None:
    cmd = [sys.executable, "-m", "alignment.cli", phase, "--config", str(recipe), "--deepspeed", stage,
           "--num-processes", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _check([proc], f"single-node {phase} {stage}")


def _per_node(launcher: str, recipe: Path, phase: str, stage: str, tmp_path: Path) -> None:
    port = str(free_port())
    master = NODES[0][1]
    procs = []
    for node_rank, (ns, _addr, iface) in enumerate(NODES):
        if launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
                   "--nproc-per-node", "1", "--master-addr", master, "--master-port", port]
        else:  # DeepSpeed's launcher without ssh: every node runs it with its own --node_rank
            hostfile = tmp_path / "hostfile"
            hostfile.write_text("".join(f"{n} slots=1\n" for n, _, _ in NODES))
            cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
                   "--node_rank", str(node_rank), "--master_addr", master, "--master_port", port,
                   "--no_local_rank"]
        cmd += ["--module" if launcher == "deepspeed" else "-m", "alignment.cli", phase, "--config", str(recipe),
                "--deepspeed", stage]
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *cmd], cwd=REPO, env=_env(iface),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    _check(procs, f"two-node {launcher} {phase} {stage}")


def _assert_same_model(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "stage"), [("sft", "zero2"), ("sft", "zero3"), ("dpo", "zero2"),
                                              ("dpo", "zero3")])
def test_two_nodes_train_what_one_node_trains(tmp_path, tiny_model_dir, sft_file, toy_preferences, phase, stage):
    data = sft_file if phase == "sft" else toy_preferences
    one = tmp_path / "one-node"
    _single_node(_recipe(tmp_path, phase, tiny_model_dir, data, one), phase, stage)
    two = tmp_path / "two-nodes"
    _per_node("torchrun", _recipe(tmp_path, phase, tiny_model_dir, data, two), phase, stage, tmp_path)
    _assert_same_model(one / "model", two / "model")
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = load_file(str(two / "model" / "model.safetensors"))
    assert any(not torch.equal(base[k], trained[k]) for k in base)  # it trained


@pytest.mark.slow
def test_deepspeed_launcher_per_node_without_ssh(tmp_path, tiny_model_dir, sft_file):
    one = tmp_path / "one-node"
    _single_node(_recipe(tmp_path, "sft", tiny_model_dir, sft_file, one), "sft", "zero2")
    two = tmp_path / "two-nodes"
    _per_node("deepspeed", _recipe(tmp_path, "sft", tiny_model_dir, sft_file, two), "sft", "zero2", tmp_path)
    _assert_same_model(one / "model", two / "model")
