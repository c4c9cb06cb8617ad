"""Simulated experts: annotator accounts that judge a running feedback app through its HTTP API.

Each account signs in, takes the next item as the annotate page does, ranks the answers by how many rules of
a policies file they follow (ties: a per-annotator random draw, or a bias), adds noise, tags broken rules,
writes a corrected answer where a fixed string repairs the best one, and submits it through the page's own
submit handler, so the server checks it like any other judgment. See ``feedback_app/simulate.py``.

    .venv/bin/python scripts/simulate_experts.py --url http://127.0.0.1:7860 \\
        --policies recipes/quickstart/policies.yaml --annotators 3 --create-users --store feedback.db \\
        --noise 0.15 --bias longer=0.3 --seed 1

Passwords: ``--user NAME:PASSWORD``, else the environment variable named by ``--password-env`` (default
ALIGN_SIM_PASSWORD) for every account; with ``--create-users`` and neither, each new account gets a random
password that lives only in this process.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from alignment.errors import AlignError  # noqa: E402
from alignment.evaluation.rules import load_rules  # noqa: E402
from feedback_app.simulate import BIASES, make_experts, parse_bias, simulate, write_submissions  # noqa: E402


def accounts_from_args(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(name, password or None) per annotator, from --user or --annotators/--prefix and the password variable."""
    shared = os.environ.get(args.password_env) or None
    if args.user:
        out = []
        for spec in args.user:
            name, colon, password = spec.partition(":")
            out.append((name, password if colon else shared))
        return out
    return [(f"{args.prefix}{i + 1:02d}", shared) for i in range(args.annotators)]


def create_users(store_path: str, accounts: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """Add the accounts as annotators (an account that exists is kept, and needs its password given)."""
    from feedback_app.store import Store, StoreError

    store = Store(store_path)
    out = []
    try:
        for name, password in accounts:
            pw = password or secrets.token_urlsafe(12)
            try:
                store.add_user(name, "annotator", pw)
                print(f"[simulate] created annotator {name}", file=sys.stderr)
            except StoreError as e:
                if "already exists" not in str(e) or password is None:
                    raise SystemExit(f"error: {name}: {e}" + (
                        "; give its password with --user NAME:PASSWORD or the variable named by --password-env"
                        if "already exists" in str(e) else "")) from None
            out.append((name, pw))
    finally:
        store.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:7860")
    p.add_argument("--policies", required=True, help="rules file (policies.yaml) the oracle judges by")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", metavar="NAME[:PASSWORD]",
                     help="an annotator account (repeatable); a password here shows in the process list")
    who.add_argument("--annotators", type=int, metavar="N", help="N accounts named PREFIX01, PREFIX02, ...")
    p.add_argument("--prefix", default="sim-expert", help="account name prefix for --annotators (default sim-expert)")
    p.add_argument("--password-env", default="ALIGN_SIM_PASSWORD", metavar="VAR",
                   help="environment variable with the password of accounts given without one")
    p.add_argument("--create-users", action="store_true", help="add the accounts to --store first (annotator role)")
    p.add_argument("--store", help="the app's store (SQLite file or database URL), for --create-users only")
    p.add_argument("--project", help="the project to annotate (default: the one the app starts each account in)")
    p.add_argument("--head-to-head", action="store_true",
                   help="the project is a head-to-head evaluation: vote better / tie / both bad, no corrections")
    p.add_argument("--max-items", type=int, metavar="N", help="at most N judgments per annotator (default: all work)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="probability of swapping two adjacent answers of a ranking (default 0)")
    p.add_argument("--bias", action="append", default=[], metavar="[ANNOTATOR:]NAME=PROB",
                   help=f"with probability PROB, order answers tied on rules by NAME ({', '.join(BIASES)}: "
                        "first = the answer shown first); without ANNOTATOR for every account (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seeds every draw, per annotator and item (default 0)")
    p.add_argument("--threads", type=int, default=0,
                   help="0: one thread per annotator (default); 1: annotators take turns in one thread, "
                        "a reproducible run; N: at most N at once")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request (default 120)")
    p.add_argument("--out", help="write every acknowledged judgment to this JSONL file")
    args = p.parse_args(argv)

    if args.create_users and not args.store:
        p.error("--create-users needs --store PATH")
    if args.store and not args.create_users:
        p.error("--store is only used with --create-users")
    if args.annotators is not None and args.annotators < 1:
        p.error("--annotators must be at least 1")
    if args.max_items is not None and args.max_items < 1:
        p.error("--max-items must be at least 1")
    if args.threads < 0:
        p.error("--threads must be 0 or more")
    try:
        biases = [parse_bias(b) for b in args.bias]
        policies = load_rules(args.policies)
        accounts = accounts_from_args(args)
        make_experts([n for n, _ in accounts], seed=args.seed, noise=args.noise, biases=biases)  # validate early
    except (ValueError, AlignError) as e:
        p.error(str(e))
    if args.create_users:
        creds = create_users(args.store, accounts)
    else:
        missing = [n for n, pw in accounts if pw is None]
        if missing:
            p.error(f"no password for {', '.join(missing)}: give --user NAME:PASSWORD or set ${args.password_env}")
        creds = [(n, pw) for n, pw in accounts if pw is not None]

    result = simulate(args.url, creds, policies, seed=args.seed, noise=args.noise, biases=biases,
                      head_to_head=args.head_to_head,
                      project=args.project, max_items=args.max_items, threads=args.threads, timeout=args.timeout)
    counts = result.per_annotator()
    for name, _ in creds:
        print(f"{name}: {counts.get(name, 0)} judgments ({result.finished.get(name, '')})")
    corrections = sum(1 for s in result.submissions if s.correction)
    swaps = sum(1 for s in result.submissions if s.swapped is not None)
    print(f"{len(result.submissions)} judgments stored in {result.wall:.1f} s ({corrections} with a corrected "
          f"answer, {swaps} with a noise swap), {len(result.errors)} errors")
    for e in result.errors:
        print(f"error: {e}", file=sys.stderr)
    if args.out:
        print(f"[simulate] wrote {write_submissions(result, args.out)}", file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
