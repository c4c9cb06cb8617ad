"""`align` re-executes itself under tcmalloc when the machine has it (alignment/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignment import allocator
from alignment.errors import AlignError


@pytest.fixture
def libdir(tmp_path: Path) -> Path:
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    return tmp_path


def test_plan_preloads_tcmalloc_once(libdir: Path) -> None:
    env = {"PATH": "/bin", "LD_PRELOAD": "/opt/other.so"}
    new = allocator.plan(env, "linux", [str(libdir)])
    lib = str(libdir / "libtcmalloc_minimal.so.4")
    assert new is not None
    assert new["LD_PRELOAD"] == f"{lib}:/opt/other.so"  # ahead of what the user preloads, which is kept
    assert new[allocator.ACTIVE_ENV] == lib and new["PATH"] == "/bin"
    assert new["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(1 << 40)
    assert env == {"PATH": "/bin", "LD_PRELOAD": "/opt/other.so"}  # the caller's mapping is not touched
    assert allocator.plan(new, "linux", [str(libdir)]) is None  # the re-executed process carries on
    assert allocator.without(new) == {**env, "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}
    alone = allocator.plan({"PATH": "/bin"}, "linux", [str(libdir)])
    assert alone is not None and "LD_PRELOAD" not in allocator.without(alone)
    # This process never loaded that (empty) file: the log must not claim tcmalloc.
    assert allocator.describe(new) == f"system malloc ({lib} could not be preloaded)"


@pytest.mark.parametrize("env", [
    {"ALIGN_ALLOCATOR": "system"},
    {"ALIGN_ALLOCATOR": " System "},
    {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},  # the user chose an allocator already
    {"ALIGN_ALLOCATOR_ACTIVE": "/x/libtcmalloc.so.4"},
])
def test_plan_leaves_the_process_alone(libdir: Path, env: dict[str, str]) -> None:
    assert allocator.plan(env, "linux", [str(libdir)]) is None


def test_plan_without_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert allocator.plan({}, "linux", [str(tmp_path)]) is None  # auto: the system allocator, silently
    with pytest.raises(AlignError, match="apt install libtcmalloc-minimal4"):
        allocator.plan({"ALIGN_ALLOCATOR": "tcmalloc"}, "linux", [str(tmp_path)])
    assert allocator.describe({}) == "system malloc"


def test_plan_only_on_linux(libdir: Path) -> None:
    assert allocator.plan({}, "darwin", [str(libdir)]) is None


def test_plan_rejects_an_unknown_choice(libdir: Path) -> None:
    with pytest.raises(AlignError, match="ALIGN_ALLOCATOR must be one of auto, tcmalloc, system, not 'fast'"):
        allocator.plan({"ALIGN_ALLOCATOR": "fast"}, "linux", [str(libdir)])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", allocator.ENV, allocator.ACTIVE_ENV)}
    return {**env, **extra}


def test_cli_rejects_an_unknown_choice_in_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "alignment.cli", "--help"], capture_output=True, text=True,
                       env=_clean_env(ALIGN_ALLOCATOR="fast"), timeout=120)
    assert r.returncode == 2
    assert r.stderr == ("error: field 'ALIGN_ALLOCATOR': ALIGN_ALLOCATOR must be one of auto, tcmalloc, system, "
                        "not 'fast'\n"), r.stderr
    assert r.stdout == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_reexec_runs_the_same_command_under_tcmalloc() -> None:
    """A real re-exec: the same interpreter flags and arguments, tcmalloc mapped into the new process."""
    if allocator.find_tcmalloc() is None:
        if os.environ.get("ALIGN_TEST_REQUIRE_TCMALLOC"):
            pytest.fail("tcmalloc is not installed, but .ci/run installs it (libtcmalloc-minimal4)")
        pytest.skip("tcmalloc is not installed (apt install libtcmalloc-minimal4)")
    code = ("import os, sys; from alignment import allocator; print('start', os.getpid(), flush=True); "
            "allocator.reexec_if_useful(); "
            "maps = open('/proc/self/maps').read(); "
            "print('after', os.getpid(), 'tcmalloc' in maps, sys.argv[1:], sys.flags.optimize, "
            "os.environ['ALIGN_ALLOCATOR_ACTIVE']); print(allocator.describe())")
    r = subprocess.run([sys.executable, "-O", "-c", code, "a b", "--x"], capture_output=True, text=True,
                       env=_clean_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("start") and lines[1].startswith("start"), lines
    pid = lines[0].split()[1]
    assert lines[1].split()[1] == pid  # exec keeps the process: a launcher waiting on it notices nothing
    assert lines[2] == f"after {pid} True ['a b', '--x'] 1 {allocator.find_tcmalloc()}"
    assert lines[3] == f"tcmalloc ({allocator.find_tcmalloc()})"
    # Asked for the system allocator: no re-exec, tcmalloc not loaded.
    r = subprocess.run([sys.executable, "-c", code.replace("os.environ['ALIGN_ALLOCATOR_ACTIVE']", "0")
                        .replace("print(allocator.describe())", "pass")],
                       capture_output=True, text=True, env=_clean_env(ALIGN_ALLOCATOR="system"), timeout=120)
    assert r.stdout.splitlines()[1].split()[2] == "False", r.stdout
