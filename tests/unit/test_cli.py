"""The ``align`` command line itself: ``--version``, the ``-q``/``-v`` levels of :mod:`alignment.log`, options that a
subcommand would override, and credentials masked in every logged line."""

from __future__ import annotations

import argparse
import logging
from importlib import metadata
from types import SimpleNamespace

import pytest

from alignment import cli, log
from alignment.cli import build_parser, main
from alignment.run import Run


def test_version_is_the_installed_distributions(capsys, monkeypatch):
    provider = metadata.packages_distributions()["alignment"][0]  # found by package: the distribution may be renamed
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"align {metadata.version(provider)}\n"
    # Even under -q, and before the (otherwise required) command.
    with pytest.raises(SystemExit):
        main(["-q", "--version"])
    assert capsys.readouterr().out == f"align {metadata.version(provider)}\n"
    # Run from a source tree that is not installed.
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {})
    assert cli.version() == "unknown"


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]


def test_no_subcommand_option_has_a_default_that_overrides_its_parents():
    """argparse copies every value a subparser sets, its defaults included, over what the parent parsed: an option
    on a parent and again on a subcommand must have no default below (``align app --store X users add`` wrote to
    feedback.db)."""
    found = []

    def walk(parser: argparse.ArgumentParser, above: dict[str, str]) -> None:
        for action in parser._actions:
            for option in action.option_strings:
                if option in above and action.default is not argparse.SUPPRESS:
                    found.append(f"{parser.prog} {option} (default {action.default!r}) under {above[option]}")
        mine = {o: parser.prog for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}
        for sub in _subparsers(parser):
            walk(sub, {**above, **mine})

    walk(build_parser(), {})
    assert found == []


def _run(tmp_path) -> Run:
    return Run(SimpleNamespace(output_dir=str(tmp_path)), "sft", resume_from=None)


def test_quiet_keeps_warnings_and_errors_only(tmp_path, capsys):
    run = _run(tmp_path)
    with log.verbosity(log.level_for(quiet=True)):
        run.log("step 1/2 loss 0.5")
        run.log("WARNING: the chat template and generation disagree")
        log.get_logger("cli").error("error: broken")
    out, err = capsys.readouterr()
    assert out == "[sft] WARNING: the chat template and generation disagree\n"
    assert err == "error: broken\n"
    # The level before the block comes back: the default prints info lines, plain, as print did.
    run.log("step 2/2 loss 0.4")
    log.get_logger("app").debug("not at the default level")
    assert capsys.readouterr().out == "[sft] step 2/2 loss 0.4\n"


def test_the_command_line_sets_the_level_for_one_command(tmp_path, capsys):
    missing = str(tmp_path / "none.yaml")
    assert main(["-v", "run", missing]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"align {cli.version()} (Python ") and out.endswith(f": -v run {missing}\n")
    assert err.startswith("error: ") and err.count("\n") == 1
    assert main(["run", missing]) == 2  # no -v: no debug line, the same error
    out, err2 = capsys.readouterr()
    assert (out, err2) == ("", err)
    assert main(["-q", "run", missing]) == 2
    assert capsys.readouterr().err == err
    assert log.get_logger().level == logging.INFO
    with pytest.raises(SystemExit):  # one or the other
        build_parser().parse_args(["-q", "-v", "run", missing])


def test_launched_processes_get_the_level_of_the_launching_one():
    args = build_parser().parse_args(["-q", "sft", "--config", "r.yaml", "--num-processes", "2"])
    argv = cli._launch_argv(args, ["train.lr=1e-4"])
    assert argv[:2] == ["-q", "sft"]
    again = build_parser().parse_args(argv)
    assert (again.quiet, again.command, again.config, again.overrides) == (True, "sft", "r.yaml", ["train.lr=1e-4"])


def test_passwords_in_urls_are_masked_in_every_line(tmp_path, capsys):
    log.get_logger("app").info("added x to postgresql+psycopg://user:s3cret@db.example:5432/feedback")
    _run(tmp_path).log("feedback store postgresql://u:p@ss@h/db#round-1 -> data/train.jsonl")
    log.output("http://host:8080/x and postgresql://user@h/db")  # no password: as it is
    assert capsys.readouterr().out == ("added x to postgresql+psycopg://user:***@db.example:5432/feedback\n"
                                       "[sft] feedback store postgresql://u:***@h/db#round-1 -> data/train.jsonl\n"
                                       "http://host:8080/x and postgresql://user@h/db\n")


# The functions whose job is to print a command's result (a table, a path, a validation summary): -q keeps
# those, as it keeps errors. Everything else in the library speaks through alignment.log, so -q hides it.
RESULT_PRINTERS = {
    ("data/summary.py", "validate_command"),
    ("evaluation/run.py", "eval_command"),
    ("evaluation/edge_cases.py", "edge_cases_command"),
    ("pipeline.py", "_run_eval_phase"),
    # The one-time conversion of the embedded model talks on stderr: `install` prints the model's path on
    # stdout for scripts to read, and the conversion can run before any logger is configured.
    ("default_model.py", "ensure_default_model"),
    ("default_model.py", "install_main"),
}


def test_the_library_prints_results_only_and_logs_everything_else():
    import ast
    from pathlib import Path

    import alignment

    root = Path(alignment.__file__).parent
    printers = set()
    for path in sorted(root.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print" for n in ast.walk(fn)):
                    printers.add((path.relative_to(root).as_posix(), fn.name))
    assert printers == RESULT_PRINTERS


def test_quiet_hides_the_pipelines_progress_and_keeps_its_warnings(tmp_path, capsys):
    from alignment import pipeline

    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "complete.json").write_text('{"fingerprint": "old", "data": {"train": "old"}}')
    with log.verbosity(log.level_for(quiet=True)):
        assert not pipeline._is_complete(tmp_path / "sft", "f", {"train": "new"}, {"train": "t.jsonl"})
    assert capsys.readouterr().out == ""
    assert not pipeline._is_complete(tmp_path / "sft", "f", {"train": "new"}, {"train": "t.jsonl"})
    assert "[pipeline] sft: its data changed since it completed (train: t.jsonl); running it again" in (
        capsys.readouterr().out)


_RANK_SCRIPT = """
import atexit, os, sys
import torch.distributed as dist
from alignment import cli
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
atexit.register(lambda: open(sys.argv[1], "w").write("handlers ran"))
sys.stdout.write("buffered line without a newline")
cli._leave_rank(3)
print("after _leave_rank")
"""


def test_a_rank_leaves_with_its_code_after_its_exit_handlers_and_output(tmp_path):
    import subprocess
    import sys

    from alignment.distributed import free_port

    marker = tmp_path / "marker"
    done = subprocess.run([sys.executable, "-c", _RANK_SCRIPT, str(marker), str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered line without a newline"  # flushed, and nothing ran after the exit
    assert marker.read_text() == "handlers ran"


def test_a_single_process_returns_from_leave_rank():
    cli._leave_rank(0)  # no process group: nothing to do, the interpreter exits normally
