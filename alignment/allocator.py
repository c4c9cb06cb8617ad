"""Run training under tcmalloc when the machine has it.

PyTorch on CPU gets every tensor's memory from the C library's ``malloc``. glibc's default malloc hands
large blocks straight back to the kernel and takes fresh ones for the next step, so every training step
faults in hundreds of thousands of new pages, and what it keeps in its heap fragments. tcmalloc keeps
freed blocks in size classes and reuses them. On the 2-core benchmark machine, a reward-model step with
gradient checkpointing (16 pairs of about 300 tokens, the embedded 135M model) ran 1.26x faster under
tcmalloc and peaked at 2,708 instead of 4,036 MiB (``benchmarks/``, README "Benchmarks").

``align`` calls :func:`reexec_if_useful` before it imports torch: when tcmalloc is installed (Debian and
Ubuntu: ``apt install libtcmalloc-minimal4``; ``make setup`` tries to) and not loaded yet, the command
starts again with it in ``LD_PRELOAD``. ``ALIGN_ALLOCATOR`` chooses:

- ``auto`` (the default): tcmalloc when found, else the system allocator, silently;
- ``tcmalloc``: tcmalloc or one clear error saying how to install it;
- ``system``: never preload anything.

DeepSpeed's workers inherit the environment, so every rank runs under the same allocator.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from alignment.errors import AlignError

ENV = "ALIGN_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "system")
# Set in the re-executed process: which allocator the run has (also stops a second re-exec).
ACTIVE_ENV = "ALIGN_ALLOCATOR_ACTIVE"
LIBRARY_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
               "/usr/local/lib", "/opt/homebrew/lib")
# tcmalloc reports every allocation over 1 GiB on stderr; a 49k-vocabulary logits tensor is one.
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def find_tcmalloc(search_dirs: Sequence[str] | None = None) -> str | None:
    """The path of an installed tcmalloc shared library (in SEARCH_DIRS, else the linker's), or None."""
    for directory in SEARCH_DIRS if search_dirs is None else search_dirs:
        for name in LIBRARY_NAMES:
            path = Path(directory) / name
            if path.is_file():
                return str(path)
    found = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    return found if found and Path(found).is_absolute() and Path(found).is_file() else None


def preloaded(env: Mapping[str, str]) -> bool:
    """Whether tcmalloc (or another allocator the user chose) is already in LD_PRELOAD."""
    return any(key in env.get("LD_PRELOAD", "") for key in ("tcmalloc", "jemalloc", "mimalloc"))


def plan(env: Mapping[str, str], platform: str | None = None,
         search_dirs: Sequence[str] | None = None) -> dict[str, str] | None:
    """The environment to re-execute with, or None to carry on as we are (platform: sys.platform's)."""
    platform = sys.platform if platform is None else platform
    choice = env.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise AlignError(f"{ENV} must be one of {', '.join(CHOICES)}, not '{env[ENV]}'", field=ENV)
    if choice == "system" or env.get(ACTIVE_ENV) or preloaded(env):
        return None
    library = find_tcmalloc(search_dirs) if platform.startswith("linux") else None
    if library is None:
        if choice == "tcmalloc":
            raise AlignError(f"{ENV}=tcmalloc but no tcmalloc library was found (Debian/Ubuntu: "
                             "apt install libtcmalloc-minimal4; or set it to auto or system)", field=ENV)
        return None
    new = {**env, **{k: v for k, v in QUIET.items() if k not in env}, ACTIVE_ENV: library}
    new["LD_PRELOAD"] = ":".join(filter(None, [library, env.get("LD_PRELOAD", "")]))
    return new


def without(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with what :func:`plan` added taken out again (its LD_PRELOAD entry and the marker), so a
    child process started from it gets the system malloc; what the user preloaded stays."""
    env = dict(env)
    ours = env.pop(ACTIVE_ENV, None)
    if ours:
        rest = [p for p in env.get("LD_PRELOAD", "").split(":") if p and p != ours]
        if rest:
            env["LD_PRELOAD"] = ":".join(rest)
        else:
            env.pop("LD_PRELOAD", None)
    return env


def reexec_if_useful() -> None:
    """Start this very command line again under tcmalloc when :func:`plan` says so; otherwise return.

    The same interpreter, flags and arguments (``sys.orig_argv``), in the same process (exec keeps the
    PID, so a launcher or shell waiting on it notices nothing).
    """
    new_env = plan(os.environ)
    if new_env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], new_env)


def loaded(library: str) -> bool:
    """Whether this process has `library` mapped (Linux /proc/self/maps; True where that cannot be read)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return True
    return os.path.realpath(library) in maps or library in maps


def describe(env: Mapping[str, str] = os.environ) -> str:
    """One phrase for logs: which allocator this process runs with."""
    if env.get(ACTIVE_ENV):
        library = env[ACTIVE_ENV]
        if not loaded(library):  # the dynamic loader ignores a preload it cannot load, with a warning
            return f"system malloc ({library} could not be preloaded)"
        return f"tcmalloc ({library})"
    if preloaded(env):
        return f"LD_PRELOAD={env['LD_PRELOAD']}"
    return "system malloc"
