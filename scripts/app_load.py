"""Load generator for the expert feedback app: many annotator sessions submitting judgments at once.

Each session is a thread with its own HTTP client. It signs in through ``POST /login`` (our cookie), then
speaks Gradio's queue protocol directly (``POST /gradio_api/queue/join`` and the
``GET /gradio_api/queue/data`` event stream) under one Gradio session hash, so the server-side ``gr.State``
carries the loaded item from ``/load`` to ``/submit`` exactly as in a browser.

Every submit carries a unique token in the "note for the admin" field; the session records the prompt it
was shown, the ranks it gave per response slot and the wall latency from the request to the acknowledged
answer. :func:`check_acks` then matches acknowledgements to stored rows exactly: one row per token, for
the displayed item, by the submitting user, with the same ranks.

Run it on its own (a fresh temporary store, a server subprocess, the load, a markdown table)::

    .venv/bin/python scripts/app_load.py --users 50 --per-user 20

or import it (``run_load``, ``setup_store``, ``Server``, ``check_acks``) as the tests do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from feedback_app.annotate import LETTERS  # noqa: E402
from feedback_app.render import render_prompt, render_response  # noqa: E402
from feedback_app.simulate import Api, app_login, queue_call  # noqa: E402
from feedback_app.store import Project, Store, display_order, judgments, users  # noqa: E402

TOKEN_PREFIX = "load-"


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Ack:
    """One acknowledged submit: who, which item (as displayed), the token and ranks sent, how long it took."""

    user: str
    prompt_html: str  # the prompt shown when the form was submitted
    responses: tuple[str, ...]  # the response slots shown (HTML), in display order
    token: str  # unique per submit; sent as the judgment's note
    ranks: tuple[int, ...]  # per displayed response slot (A, B, ...)
    latency: float  # seconds from the request to the acknowledged answer
    fresh: bool  # "Saved." (True) or "Already saved" (False)
    item_id: int | None = None  # filled by resolve_items()


@dataclass
class LoadResult:
    acks: list[Ack] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # of every acknowledged submit
    errors: list[str] = field(default_factory=list)
    displayed: dict[str, list[str]] = field(default_factory=dict)  # per user: prompts shown, in order
    wall: float = 0.0  # seconds from the first login to the last session's end

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add_ack(self, ack: Ack) -> None:
        with self._lock:
            self.acks.append(ack)
            self.latencies.append(ack.latency)

    def add_error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def show(self, user: str, prompt_html: str) -> None:
        with self._lock:
            self.displayed.setdefault(user, []).append(prompt_html)


# ------------------------------------------------------------------------------------------------ protocol


def fetch_api(url: str, name: str, password: str, timeout: float = 60.0) -> Api:
    with httpx.Client(base_url=url, timeout=timeout) as client:
        app_login(client, name, password)
        r = client.get("/config")
        r.raise_for_status()
        return Api.from_config(r.json())


@dataclass
class View:
    """What a /load or /submit answer put on the page (None: that part was not updated)."""

    prompt_html: str | None
    k: int | None  # number of visible response slots
    message: str | None
    responses: tuple[str, ...] | None  # HTML of the visible response slots


def _view(data: list[Any], outputs: dict[str, int]) -> View:
    def value(key: str) -> Any:
        v = data[outputs[key]]
        return None if isinstance(v, dict) and v.get("__type__") == "update" and "value" not in v else v

    prompt = value("prompt")
    k = None
    if isinstance(data[outputs["rank-0"]], dict) and "choices" in data[outputs["rank-0"]]:
        k = sum(1 for i in range(8) if data[outputs[f"rank-{i}"]].get("choices"))
    message = value("message")
    responses = tuple(data[outputs[f"response-{i}"]] for i in range(k)) if k is not None else None
    return View(prompt if isinstance(prompt, str) else None, k, message if isinstance(message, str) else None,
                responses)


class Session:
    """One annotator in one browser tab: a cookie, a Gradio session hash, sequential events."""

    def __init__(self, url: str, api: Api, name: str, password: str, timeout: float = 120.0) -> None:
        self.api = api
        self.name = name
        self.password = password
        self.client = httpx.Client(base_url=url, timeout=timeout)
        self.session_hash = secrets.token_hex(8)

    def close(self) -> None:
        self.client.close()

    def login(self) -> None:
        app_login(self.client, self.name, self.password)

    def call(self, fn_index: int, data: list[Any]) -> list[Any]:
        """Run one Gradio event to completion; returns its output list."""
        return queue_call(self.client, self.session_hash, fn_index, data, f"event {fn_index}")

    def load(self) -> View:
        return _view(self.call(self.api.fn["load"], []), self.api.outputs["load"])

    def submit(self, ranks: Sequence[int], note: str) -> View:
        values: dict[str, Any] = {"unacceptable": False, "correction-of": None, "correction": "", "negative": "",
                                  "note": note}
        data = []
        for key in self.api.inputs["submit"]:
            if key.startswith("rank-"):
                i = int(key.removeprefix("rank-"))
                data.append(str(ranks[i]) if i < len(ranks) else None)
            elif key.startswith("tags-"):
                data.append([])
            else:
                data.append(values.get(key))  # the gr.State: None, the server keeps it
        return _view(self.call(self.api.fn["submit"], data), self.api.outputs["submit"])


def _annotate(session: Session, per_user: int, result: LoadResult, run_id: str, seed: int,
              stop_event: threading.Event | None, on_ack: Callable[[Ack], None] | None) -> None:
    user = session.name
    done = 0
    try:
        session.login()
        view = session.load()
        prompt, k, responses = view.prompt_html, view.k, view.responses or ()
        result.show(user, prompt or "")
        while done < per_user and not (stop_event is not None and stop_event.is_set()):
            if not prompt or not k:
                result.add_error(f"{user}: nothing to annotate after {done} judgments ({view.message})")
                return
            rng = random.Random(f"{seed}:{user}:{done}")
            ranks = tuple(rng.randint(1, k) for _ in range(k))  # ties allowed
            token = f"{TOKEN_PREFIX}{run_id}-{user}-{done}"
            t0 = time.perf_counter()
            view = session.submit(ranks, token)
            latency = time.perf_counter() - t0
            message = view.message or ""
            if not (message.startswith("Saved.") or message.startswith("Already saved")):
                result.add_error(f"{user}: submit {done} not acknowledged: {message!r}")
                return
            ack = Ack(user, prompt, tuple(responses), token, ranks, latency, message.startswith("Saved."))
            result.add_ack(ack)
            if on_ack is not None:
                on_ack(ack)
            done += 1
            prompt = view.prompt_html
            if view.k is not None:
                k, responses = view.k, view.responses or ()
            result.show(user, prompt or "")
    except Exception as e:  # a session ends at its first failure; the error is the record
        result.add_error(f"{user}: after {done} judgments: {type(e).__name__}: {e}")
    finally:
        session.close()


def run_load(url: str, users: Sequence[tuple[str, str]], per_user: int, stop_event: threading.Event | None = None,
             *, on_ack: Callable[[Ack], None] | None = None, seed: int = 0, timeout: float = 120.0,
             api: Api | None = None) -> LoadResult:
    """``len(users)`` concurrent sessions, each submitting up to ``per_user`` judgments; returns what happened.

    A session stops at its first error (recorded in ``errors``), when ``stop_event`` is set, or after
    ``per_user`` acknowledged submits. ``on_ack`` is called (from the session's thread) for every ack.
    """
    result = LoadResult()
    t0 = time.perf_counter()
    if api is None:
        try:
            api = fetch_api(url, *users[0], timeout=timeout)
        except Exception as e:
            result.errors.append(f"config: {type(e).__name__}: {e}")
            return result
    run_id = secrets.token_hex(4)
    threads = []
    for name, password in users:
        session = Session(url, api, name, password, timeout=timeout)
        t = threading.Thread(target=_annotate, args=(session, per_user, result, run_id, seed, stop_event, on_ack),
                             name=f"load-{name}", daemon=True)
        threads.append(t)
        t.start()
    for t in threads:
        t.join()
    result.wall = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------------------ checking


def resolve_items(store: Store, project_id: int, result: LoadResult) -> None:
    """Fill ``item_id`` of every ack from the displayed prompt (the page shows ``render_prompt`` of the item)."""
    index: dict[str, int] = {}
    for item_id, prompt in _items(store, project_id):
        index[render_prompt(prompt)] = item_id
    result.acks[:] = [dataclasses.replace(a, item_id=index.get(a.prompt_html)) for a in result.acks]


def _items(store: Store, project_id: int) -> list[tuple[int, list[dict[str, str]]]]:
    from feedback_app.store import items

    with store.read() as c:
        rows = c.execute(items.select().where(items.c.project_id == project_id)).all()
    return [(r.id, json.loads(r.prompt)) for r in rows]


@dataclass(frozen=True)
class Row:
    id: int
    user: str
    user_id: int
    item_id: int
    note: str
    ranks: dict[int, int]


def judgment_rows(store: Store) -> list[Row]:
    """Every stored judgment row (not just the latest per annotator and item)."""
    q = judgments.join(users).select().with_only_columns(judgments.c.id, users.c.name, judgments.c.user_id,
                                                          judgments.c.item_id, judgments.c.payload)
    with store.read() as c:
        out = []
        for r in c.execute(q):
            payload = json.loads(r.payload)
            out.append(Row(r.id, r.name, r.user_id, r.item_id, payload.get("note", ""),
                           {int(k): int(v) for k, v in payload.get("ranks", {}).items()}))
    return out


def check_acks(store: Store, project_id: int, result: LoadResult, *, max_unacked: int = 0) -> list[str]:
    """Problems with the exact correspondence of acknowledged submits and stored rows (empty list: exact).

    Every ack has exactly one row with its token, by its user, for the item it displayed, whose responses
    were shown in the user's display order, with the ranks given per shown slot. Rows with a load token
    that no ack names (a submit cut off before its answer arrived) are allowed up to ``max_unacked``; no
    (user, item) has two rows.
    """
    resolve_items(store, project_id, result)
    rows = judgment_rows(store)
    by_token: dict[str, list[Row]] = {}
    for row in rows:
        by_token.setdefault(row.note, []).append(row)
    problems = []
    item_cache: dict[int, Any] = {}
    for a in result.acks:
        found = by_token.get(a.token, [])
        if len(found) != 1:
            problems.append(f"ack {a.token}: {len(found)} stored rows")
            continue
        row = found[0]
        if a.item_id is None:
            problems.append(f"ack {a.token}: displayed prompt is no item of the project")
        elif (row.user, row.item_id) != (a.user, a.item_id):
            problems.append(f"ack {a.token}: shown ({a.user}, item {a.item_id}) but stored ({row.user}, item "
                            f"{row.item_id})")
        else:
            item = item_cache.get(row.item_id) or store.item(row.item_id)
            item_cache[row.item_id] = item
            order = display_order(row.user_id, item)
            shown = tuple(render_response(LETTERS[i], c.text) for i, c in enumerate(order))
            if shown != a.responses:
                problems.append(f"ack {a.token}: the responses shown are not the item's in display order")
            expected = dict(zip([c.id for c in order], a.ranks))
            if expected != row.ranks:
                problems.append(f"ack {a.token}: sent ranks {expected}, stored {row.ranks}")
    acked = {a.token for a in result.acks}
    unacked = [r for r in rows if r.note.startswith(TOKEN_PREFIX) and r.note not in acked]
    if len(unacked) > max_unacked:
        problems.append(f"{len(unacked)} stored rows were never acknowledged (allowed {max_unacked}): "
                        f"{[r.note for r in unacked[:5]]}")
    pairs: dict[tuple[int, int], int] = {}
    for r in rows:
        pairs[(r.user_id, r.item_id)] = pairs.get((r.user_id, r.item_id), 0) + 1
    dups = [p for p, n in pairs.items() if n > 1]
    if dups:
        problems.append(f"{len(dups)} (user, item) pairs stored more than once: {dups[:5]}")
    return problems


def over_overlap(store: Store, project: Project) -> list[str]:
    """Items with more assigned or judging annotators than the project's overlap."""
    from feedback_app.store import assignments, items

    problems = []
    with store.read() as c:
        for r in c.execute(items.select().where(items.c.project_id == project.id)):
            if r.n_assigned > project.overlap:
                problems.append(f"item {r.id}: n_assigned {r.n_assigned} > overlap {project.overlap}")
        n_assign: dict[int, int] = {}
        for r in c.execute(assignments.select()):
            n_assign[r.item_id] = n_assign.get(r.item_id, 0) + 1
    problems += [f"item {i}: {n} assignments > overlap {project.overlap}" for i, n in n_assign.items()
                 if n > project.overlap]
    annotators: dict[int, set[int]] = {}
    for row in judgment_rows(store):
        annotators.setdefault(row.item_id, set()).add(row.user_id)
    problems += [f"item {i}: {len(u)} annotators > overlap {project.overlap}" for i, u in annotators.items()
                 if len(u) > project.overlap]
    return problems


# ------------------------------------------------------------------------------------------------ setup


def create_users(store: Store, n: int, prefix: str = "annotator", role: str = "annotator",
                 workers: int = 8) -> list[tuple[str, str]]:
    """``n`` accounts (name, password), hashed in a thread pool (scrypt releases the GIL)."""
    creds = [(f"{prefix}{i:03d}", secrets.token_urlsafe(12)) for i in range(n)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda c: store.add_user(c[0], role, c[1]), creds))
    return creds


def setup_store(db: str | Path, n_users: int, per_user: int, *, k: int = 3, overlap: int = 3,
                assign_batch: int = 5, n_items: int | None = None) -> tuple[Store, Project, list[tuple[str, str]]]:
    """A fresh store with ``n_users`` annotators and enough items of ``k`` candidates for ``per_user`` each.

    Each annotator claims up to ``assign_batch`` items beyond the ones judged (the batch shown after the
    last submit), so the default item count leaves room for that and some more.
    """
    store = Store(db)
    project = store.ensure_project("default")
    project = store.update_project(project.id, candidates_per_item=k, overlap=overlap, assign_batch=assign_batch)
    if n_items is None:
        need = per_user + 2 * assign_batch  # judged, plus the batch claimed after the last one, plus slack
        n_items = max(math.ceil(n_users * need / overlap), need) + 10
    store.add_prompts(project.id, [[{"role": "system", "content": "You are a support assistant."},
                                    {"role": "user", "content": f"Load-test question {i}: how do I do thing {i}?"}]
                                   for i in range(n_items)], source="app_load")
    for item_id, prompt, missing in store.items_short_of_candidates(project.id, k):
        q = prompt[-1]["content"]
        store.add_candidates(item_id, [(f"Answer {j} to <{q}> & more", f"model-{j}", {"temperature": 0.7})
                                       for j in range(missing)])
    creds = create_users(store, n_users)
    return store, project, creds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``align app`` as a subprocess on a free port (``kill()`` is SIGKILL: no shutdown code runs)."""

    def __init__(self, db: str | Path, port: int | None = None, log: str | Path | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.db = str(db)
        self.args = tuple(args)  # more `align app` options
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="align-app-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> Server:
        align = Path(sys.executable).with_name("align")
        cmd = [str(align)] if align.exists() else [sys.executable, "-c", "from alignment.cli import entry; entry()"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*cmd, "app", "--store", self.db, "--port", str(self.port), *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                         env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ report


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(result: LoadResult, sessions: int, stored: int) -> dict[str, Any]:
    lat = result.latencies
    return {"sessions": sessions, "judgments": len(result.acks), "stored": stored,
            "median_ms": 1000 * statistics.median(lat) if lat else float("nan"),
            "p95_ms": 1000 * percentile(lat, 95), "throughput": len(result.acks) / result.wall if result.wall else 0.0,
            "errors": len(result.errors)}


def markdown_table(s: dict[str, Any]) -> str:
    head = ("| sessions | judgments | stored | median submit (ms) | p95 submit (ms) | throughput (judgments/s) "
            "| errors |")
    return "\n".join([head, "|---:|---:|---:|---:|---:|---:|---:|",
                      f"| {s['sessions']} | {s['judgments']} | {s['stored']} | {s['median_ms']:.0f} | "
                      f"{s['p95_ms']:.0f} | {s['throughput']:.1f} | {s['errors']} |"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=50, help="concurrent annotator sessions")
    p.add_argument("--per-user", type=int, default=20, help="judgments each session submits")
    p.add_argument("--overlap", type=int, default=3, help="annotators per item")
    p.add_argument("--k", type=int, default=3, help="candidates per item")
    p.add_argument("--keep", action="store_true", help="keep the temporary store and server log")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="align-load-"))
    db = tmp / "feedback.db"
    t0 = time.perf_counter()
    store, project, creds = setup_store(db, args.users, args.per_user, k=args.k, overlap=args.overlap)
    print(f"[load] store {db}: {args.users} annotators, {len(_items(store, project.id))} items, overlap "
          f"{project.overlap} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    server = Server(db, log=tmp / "server.log")
    try:
        server.start()
        print(f"[load] server {server.url}; {args.users} sessions x {args.per_user} judgments", file=sys.stderr)
        result = run_load(server.url, creds, args.per_user)
    finally:
        server.stop()
    problems = check_acks(store, project.id, result) + over_overlap(store, project) + store.integrity_problems()
    print(markdown_table(summary(result, args.users, store.count_judgment_rows())))
    for e in result.errors[:10]:
        print(f"error: {e}", file=sys.stderr)
    for prob in problems[:10]:
        print(f"problem: {prob}", file=sys.stderr)
    print("acknowledged = stored, exactly" if not problems else f"{len(problems)} problem(s)", file=sys.stderr)
    store.close()
    if args.keep:
        print(f"[load] kept {tmp}", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not problems and not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
