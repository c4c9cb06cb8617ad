"""``align app``, ``align app users ...``, ``align app db current|upgrade``, ``align feedback export``, ``check``,
``gold``, ``score``, ``lineage`` and ``h2h create|report``.

``--store`` is accepted at every level of these commands (``align app --store X users add`` and ``align app users
add --store X`` are the same); when it is given nowhere, ``$ALIGN_STORE`` names the store, else feedback.db.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import secrets
import sys
from typing import Any

from alignment import log
from alignment.config import ModelOptions

DEFAULT_STORE = "feedback.db"
STORE_ENV = "ALIGN_STORE"

_LOG = log.get_logger("app")
_STORE_HELP = f"SQLite file or database URL (default: ${STORE_ENV}, else {DEFAULT_STORE})"


def _store_option(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--store`` on ``p``. Only the command's top parser has a default (None: resolved by :func:`store_from`);
    below it the option has none at all. A subparser's default would be written over the value its parent
    parsed: ``align app --store prod.db users add alice`` wrote to feedback.db."""
    p.add_argument("--store", default=None if top else argparse.SUPPRESS, help=_STORE_HELP)


def store_from(given: str | None) -> tuple[str, str]:
    """The store to open and where it came from: ``--store`` as given, else ``$ALIGN_STORE``, else feedback.db."""
    if given:
        return given, "--store"
    env = os.environ.get(STORE_ENV, "").strip()
    if env:
        return env, f"${STORE_ENV}"
    return DEFAULT_STORE, "the default"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("app", help="the expert feedback app (Gradio)")
    _store_option(p, top=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--secure-cookies", action="store_true", help="mark the session cookie Secure (behind HTTPS)")
    p.add_argument("--max-upload-mb", type=float, default=100.0,
                   help="largest file an admin may upload (default 100 MiB; annotators may upload nothing)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                   help="a reverse proxy whose X-Forwarded-For is believed (repeatable; default: none)")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="URL",
                   help="an origin besides this server's own that pages are served under, e.g. "
                        "https://feedback.example.org behind a proxy that rewrites Host (repeatable)")
    ModelOptions.add_arguments(p)  # how the admin's generation jobs load their models
    asub = p.add_subparsers(dest="app_command")
    u = asub.add_parser("users", help="manage accounts")
    _store_option(u)
    usub = u.add_subparsers(dest="users_command", required=True)
    a = usub.add_parser("add", help="add a user; the password is prompted, or generated and printed once")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=["annotator", "admin"])
    _store_option(a)
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a.add_argument("--generate", action="store_true", help="generate a password even on a terminal")
    pw = usub.add_parser("passwd", help="set a new password (ends the user's sessions)")
    pw.add_argument("name")
    _store_option(pw)
    pw.add_argument("--password-stdin", action="store_true")
    pw.add_argument("--generate", action="store_true")
    for name, help_ in (("disable", "disable an account (ends its sessions)"), ("enable", "re-enable an account")):
        d = usub.add_parser(name, help=help_)
        d.add_argument("name")
        _store_option(d)
    ls = usub.add_parser("list", help="list accounts")
    _store_option(ls)
    # Opening a store upgrades it anyway; these let an admin see where a store stands and upgrade it as a step of
    # its own (a PostgreSQL store before the new release's servers start), rather than from the first server up.
    db = asub.add_parser("db", help="the store's schema: its revision, or upgrade it now")
    _store_option(db)
    dsub = db.add_subparsers(dest="db_command", required=True)
    for name, help_ in (("current", "the store's schema revision, and whether it is the newest (changes nothing)"),
                        ("upgrade", "upgrade the store's schema to the newest revision (what opening it does)")):
        _store_option(dsub.add_parser(name, help=help_))

    p = sub.add_parser("feedback", help="feedback store tools")
    _store_option(p, top=True)
    fsub = p.add_subparsers(dest="feedback_command", required=True)
    e = fsub.add_parser("export", help="write preference pairs and unpaired examples (with provenance)")
    _store_option(e)
    e.add_argument("--out", required=True, help="preference JSONL; unpaired rows go to OUT.unpaired.jsonl")
    e.add_argument("--pairs", default="all", choices=["all", "best-vs-rest", "adjacent"])
    e.add_argument("--aggregate", default="all", choices=["all", "majority", "drop_contradicted", "agreement_weight"],
                   help="pairs of one item across its annotators: all (each annotator's pairs, the default), "
                        "majority, drop_contradicted or agreement_weight (a weight per row)")
    e.add_argument("--project", help="one project (default: all)")
    e.add_argument("--pii", default="report", choices=["report", "mask", "drop", "off"],
                   help="personal data (emails, phones, card numbers, IBANs, US SSNs, IP addresses) in the rows: "
                        "report it (the default), mask it with placeholders, drop the rows that have it, or off")
    e.add_argument("--pii-fail", action="store_true", help="exit 1 when personal data is found (the files are "
                                                            "written all the same)")
    c = fsub.add_parser("check", help="integrity check of the store")
    _store_option(c)
    g = fsub.add_parser("gold", help="mark items gold from a JSONL file of orderings (item_id or prompt, "
                                     "ordering best first; null clears)")
    g.add_argument("file", help="JSONL: one object per item with 'item_id' or 'prompt', and 'ordering'")
    _store_option(g)
    g.add_argument("--project", default="default", help="the project the items are in (default: default)")
    s = fsub.add_parser("score", help="score every candidate of a project with a reward model (replacing earlier "
                                      "scores), for serving the prompts it is least sure of first")
    _store_option(s)
    s.add_argument("--project", default="default", help="the project to score (default: default)")
    s.add_argument("--reward-model", required=True, help="a reward model directory trained by `align rm`")
    s.add_argument("--batch-size", type=int, default=16, help="answers per forward pass (default 16)")
    ModelOptions.add_arguments(s)
    s.add_argument("--max-length", type=int, default=4096,
                   help="tokens of prompt + answer scored; longer ones are truncated and counted (default 4096)")
    ln = fsub.add_parser("lineage", help="the rounds of a project: each model that wrote candidates, its candidates "
                                         "and judgments, and the store snapshot it was trained on")
    _store_option(ln)
    ln.add_argument("--project", default="default", help="the project (default: default)")
    h = fsub.add_parser("h2h", help="head-to-head evaluation: experts compare a baseline's and a challenger's answers "
                                    "to held-out prompts, blind")
    _store_option(h)
    hsub = h.add_subparsers(dest="h2h_command", required=True)
    hc = hsub.add_parser("create", help="a head-to-head project: generate both models' answers to the prompts, or "
                                        "import two answers files")
    _store_option(hc)
    hc.add_argument("--project", required=True, help="the evaluation's name (a new project, or one to extend)")
    hc.add_argument("--baseline", help="the old model (a directory, or a phase folder): generates its answers")
    hc.add_argument("--challenger", help="the new model: generates its answers")
    hc.add_argument("--prompts", help="held-out prompts (a prompts file) for --baseline and --challenger to answer")
    hc.add_argument("--baseline-answers", help="JSONL of the old model's answers: prompt, answer [, model] per line")
    hc.add_argument("--challenger-answers", help="JSONL of the new model's answers, the same prompts")
    hc.add_argument("--baseline-name", help="the baseline's name in the report (default: --baseline as given, or the "
                                            "answers file's model)")
    hc.add_argument("--challenger-name", help="the challenger's name in the report")
    hc.add_argument("--overlap", type=int, help="annotators per prompt (default 2)")
    hc.add_argument("--policies", help="a policies YAML (the domain's rules): checked, then its text is stored with "
                                       "the project, and every report (the dashboard's too) judges with these rules "
                                       "beside the experts; replaces an extended project's")
    hc.add_argument("--max-new-tokens", type=int, default=256,  # headtohead.DEFAULT_MAX_NEW_TOKENS
                    help="answer length limit when generating (default 256)")
    hc.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch (default 16)")
    hc.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above: sampled, --seed")
    hc.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ModelOptions.add_arguments(hc)
    hr = hsub.add_parser("report", help="the experts' win rate of the challenger with confidence intervals, beside "
                                        "the rules and the reward model")
    _store_option(hr)
    hr.add_argument("--project", required=True, help="the head-to-head project")
    hr.add_argument("--policies", help="a policies YAML (the domain's rules) to judge with, instead of the rules "
                                       "stored with the project (default: the stored ones, if any)")
    hr.add_argument("--samples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    hr.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from sqlalchemy import exc as sa_exc

    from feedback_app.store import Store, StoreError, public_url

    args.store, source = store_from(getattr(args, "store", None))
    if _LOG.isEnabledFor(logging.DEBUG):
        _LOG.debug(f"feedback store {public_url(args.store)} (from {source})")
    try:
        if args.command == "app" and args.app_command is None:
            from feedback_app.server import serve

            if not args.max_upload_mb > 0:
                raise StoreError(f"--max-upload-mb must be above 0 (got {args.max_upload_mb})")
            for origin in args.allowed_origin:
                if not re.fullmatch(r"https?://[^/\s]+", origin.rstrip("/")):
                    raise StoreError(f"--allowed-origin takes scheme://host[:port], got {origin!r}")

            serve(args.store, args.host, args.port, args.secure_cookies, max_upload_mb=args.max_upload_mb,
                  trusted_proxies=tuple(args.trusted_proxy), allowed_origins=tuple(args.allowed_origin),
                  model_options=ModelOptions.from_arguments(args))
            return 0
        if args.command == "app":
            return _db(args) if args.app_command == "db" else _users(args)
        if args.feedback_command == "export":
            from feedback_app import export as exp

            store = Store(args.store, create=False)
            result = exp.export_store(store, project=args.project, pairs=args.pairs, aggregate=args.aggregate)
            pairs_name, unpaired_name = (p.name for p in exp.export_paths(args.out))
            exp.scan_personal_data(result, args.pii, (pairs_name, unpaired_name))
            pairs_path, unpaired_path = exp.write_export(result, args.out)
            for line in exp.summary_lines(result, pii=False):
                _LOG.info(line)
            # Personal data left in the files is a warning, shown under -q too; masked or dropped, a report.
            for line in exp.pii_lines(result):
                (_LOG.warning if result.pii and args.pii == "report" else _LOG.info)(line)
            _LOG.info(f"wrote {pairs_path} and {unpaired_path}")
            return 1 if args.pii_fail and result.pii else 0
        if args.feedback_command == "check":
            problems = Store(args.store, create=False).integrity_problems()
            for p in problems:
                log.output(p)
            log.output("ok" if not problems else f"{len(problems)} problem(s)")
            return 0 if not problems else 1
        if args.feedback_command == "gold":
            store, project = _open_project(args)
            marked, cleared = store.import_gold(project.id, args.file)
            _LOG.info(f"{marked} item(s) marked gold, {cleared} cleared; project {project.name} has "
                      f"{len(store.gold(project.id))} gold item(s)")
            return 0
        if args.feedback_command == "score":
            return _score(args)
        if args.feedback_command == "lineage":
            return _lineage(args)
        if args.feedback_command == "h2h":
            return _h2h_create(args) if args.h2h_command == "create" else _h2h_report(args)
    except StoreError as e:
        _LOG.error(f"error: {e}")
        return 2
    except (sa_exc.DBAPIError, sa_exc.ArgumentError) as e:
        # A database that cannot be reached or a URL that cannot be parsed is the user's to fix: one line (the
        # driver's reason, without SQLAlchemy's SQL and link), the URL with its password hidden.
        _LOG.error(f"error: feedback store {public_url(args.store)}: {_reason(e, args.store)}")
        return 2
    return 0


def _reason(e: Exception, store: str) -> str:
    """The driver's message of a database error, with the store's password cut out should the driver quote it."""
    from sqlalchemy.engine import make_url

    reason = " ".join(str(getattr(e, "orig", None) or e).split())
    try:
        password = make_url(store).password if "://" in store else None
    except Exception:  # not a URL SQLAlchemy can parse: it has no password to hide
        password = None
    return reason.replace(str(password), "***") if password else reason


def _open_project(args: argparse.Namespace) -> tuple[Any, Any]:
    """The store of ``--store`` (which must exist) and its project ``--project``; a StoreError naming the
    projects there (and the store with a database URL's password hidden) when there is no such project."""
    from feedback_app.store import Store, StoreError, public_url

    store = Store(args.store, create=False)
    project = store.project(args.project)
    if project is None:
        names = ", ".join(p.name for p in store.list_projects()) or "none"
        raise StoreError(f"no project '{args.project}' in {public_url(str(args.store))} (projects: {names})")
    return store, project


def _score(args: argparse.Namespace) -> int:
    from feedback_app.scoring import score_project

    store, project = _open_project(args)
    result = score_project(store, project.id, args.reward_model, batch_size=args.batch_size,
                           max_length=args.max_length, options=ModelOptions.from_arguments(args))
    ordered = len(store.uncertainty(project.id))
    _LOG.info(f"scored {result.candidates} candidate(s) of {result.items} prompt(s) in project {project.name} in "
              f"{result.seconds:.0f} s with reward model {result.reward_model} (weights sha256 "
              f"{result.weights_sha256[:16]}...); earlier scores replaced")
    if result.truncated:
        _LOG.info(f"{result.truncated} prompt + answer(s) longer than {args.max_length} tokens were scored on their "
                  "first tokens only (--max-length)")
    if project.uncertain_first:
        _LOG.info(f"serving uncertain first: {ordered} prompt(s) ordered by the gap between their two best scores, "
                  "smallest first; the others after them")
    else:
        _LOG.info(f"{ordered} prompt(s) can be ordered by these scores; turn on 'Serve uncertain first' in the "
                  "Admin tab to claim them smallest score gap first")
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from feedback_app.store import format_rounds, public_url

    store, project = _open_project(args)
    rounds = store.rounds(project.id)
    where = public_url(str(args.store))  # as given: a database URL's password hidden
    if not rounds:
        log.output(f"project {project.name} in {where} has no candidates yet")
        return 0
    log.output(f"project {project.name} in {where}: {len(rounds)} round{'s' if len(rounds) != 1 else ''}")
    for line in format_rounds(rounds):
        log.output(line)
    return 0


def _h2h_create(args: argparse.Namespace) -> int:
    from feedback_app.headtohead import create_from_files, create_from_models
    from feedback_app.store import Store, StoreError, public_url

    generate = {"--baseline": args.baseline, "--challenger": args.challenger, "--prompts": args.prompts}
    files = {"--baseline-answers": args.baseline_answers, "--challenger-answers": args.challenger_answers}
    if any(generate.values()) and any(files.values()):
        raise StoreError("give --baseline, --challenger and --prompts (generate the answers) or --baseline-answers "
                         "and --challenger-answers (import them), not both")
    chosen = generate if any(generate.values()) else files
    missing = [option for option, value in chosen.items() if not value]
    if missing:
        raise StoreError(f"missing {', '.join(missing)}: give --baseline, --challenger and --prompts, "
                         "or --baseline-answers and --challenger-answers")
    store = Store(args.store, create=False)
    if chosen is generate:
        created = create_from_models(store, args.project, args.prompts, args.baseline, args.challenger,
                                     baseline_name=args.baseline_name, challenger_name=args.challenger_name,
                                     overlap=args.overlap, max_new_tokens=args.max_new_tokens,
                                     batch_size=args.batch_size, temperature=args.temperature, seed=args.seed,
                                     policies=args.policies, options=ModelOptions.from_arguments(args))
    else:
        created = create_from_files(store, args.project, args.baseline_answers, args.challenger_answers,
                                    baseline_name=args.baseline_name, challenger_name=args.challenger_name,
                                    overlap=args.overlap, policies=args.policies)
    s, p = created.stored, created.stored.project
    _LOG.info(f"project {p.name}: challenger {p.challenger} vs baseline {p.baseline}: {s.added} prompt(s) added"
              + (f" ({s.identical} answered identically by both: never shown)" if s.identical else "")
              + (f", {s.already_present} already there (their answers kept)" if s.already_present else "")
              + f"; {p.overlap} annotator(s) per prompt")
    if args.policies:
        _LOG.info(f"rules {p.policies_name} stored with the project: its reports judge with them")
    elif p.policies_name:
        _LOG.info(f"rules: {p.policies_name}, stored with the project")
    for line in created.skipped:
        _LOG.warning(f"warning: left out {line}")
    _LOG.info(f"experts judge it in the app; `align feedback h2h report --store {public_url(str(args.store))} "
              f"--project {p.name}` reports")
    return 0


def _h2h_report(args: argparse.Namespace) -> int:
    from feedback_app.headtohead import format_summary, project_summary
    from feedback_app.store import StoreError

    if args.samples < 1:
        raise StoreError(f"--samples must be at least 1, not {args.samples}")
    policies = None
    if args.policies:  # the file given wins over the rules stored with the project
        from alignment.evaluation.rules import load_rules

        policies = load_rules(args.policies)
    store, project = _open_project(args)
    summary = project_summary(store, project, policies=policies, policies_name=args.policies or "",
                              samples=args.samples, seed=args.seed)
    for line in format_summary(summary):
        log.output(line)
    return 0


def _db(args: argparse.Namespace) -> int:
    """``align app db current`` (reads only: the store is not opened as a Store, which would upgrade it) and
    ``align app db upgrade``."""
    from pathlib import Path

    from sqlalchemy import create_engine

    from feedback_app import migrations
    from feedback_app.store import Store, StoreError, database_url, public_url

    url = database_url(args.store)
    where = public_url(str(args.store))
    if url.startswith("sqlite") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise StoreError(f"{where}: no feedback store here")  # connecting would create an empty file
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            before, legacy, state = migrations.current(c), migrations.legacy_version(c), migrations.describe(c)
    finally:
        engine.dispose()
    if before is None and legacy is None:
        raise StoreError(f"{where}: no feedback store here (create one with `align app users add`)")
    if args.db_command == "current":
        log.output(f"{where}: {state}")
        return 0
    Store(args.store, create=False).close()  # the upgrade every open does, under its schema lock
    head = migrations.head()
    was = f"revision {before}" if before else f"schema_version {legacy} (before Alembic)"
    log.output(f"{where}: already at revision {head} (head)" if before == head
               else f"{where}: upgraded from {was} to revision {head} (head)")
    return 0


def _users(args: argparse.Namespace) -> int:
    from feedback_app.store import Store, public_url

    store = Store(args.store, create=args.users_command == "add")
    cmd = args.users_command
    if cmd == "list":
        for u in store.list_users():
            log.output(f"{u.name}\t{u.role}\t{'active' if u.active else 'disabled'}")
        return 0
    if cmd in ("enable", "disable"):
        store.set_active(args.name, cmd == "enable")
        _LOG.info(f"{args.name}: {cmd}d")
        return 0
    password, generated = _password(args)
    if cmd == "add":
        user = store.add_user(args.name, args.role, password)
        # A server's URL with its password hidden; an SQLite file's URL as it is (make_url would decode a % in it).
        _LOG.info(f"added {user.name} ({user.role}) to {store.url if store.is_sqlite else public_url(store.url)}")
    else:
        store.set_password(args.name, password)
        _LOG.info(f"new password set for {args.name}; their sessions ended")
    if generated:
        log.output(f"password (shown once): {password}")
    return 0


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    if args.generate or not sys.stdin.isatty():
        return secrets.token_urlsafe(12), True
    first = getpass.getpass("password (empty: generate one): ")
    if not first:
        return secrets.token_urlsafe(12), True
    if getpass.getpass("again: ") != first:
        from feedback_app.store import StoreError

        raise StoreError("the two passwords differ")
    return first, False
