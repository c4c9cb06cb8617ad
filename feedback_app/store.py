"""The feedback store: users, projects, prompts, candidates, assignments, judgments, drafts, jobs.

SQLite by default (a file path), any SQLAlchemy URL otherwise (``postgresql://...``). The rules that
make it safe to run under many annotators and to kill at any moment:

- every write is one short transaction; on SQLite it starts with ``BEGIN IMMEDIATE`` so two writers
  queue on the busy timeout instead of failing when one upgrades a stale read snapshot;
- WAL journal with ``synchronous=FULL``: a committed transaction survives a killed process (and a
  power cut); an uncommitted one vanishes whole;
- judgments are append-only: a revision adds a row, the latest row per (annotator, item) counts;
- a submission carries a key issued when the form was loaded, unique in the table, so a repeated
  request (double click, client retry) stores the judgment once;
- claiming an item for an annotator is a conditional ``UPDATE ... WHERE n_assigned < overlap``, atomic
  on every database, so no item gets more annotators than the project's overlap; and a claim re-checks,
  inside its transaction, that the annotator has no open item in the project, so concurrent requests of
  one annotator claim one batch between them;
- a claim not submitted within the project's ``claim_ttl_minutes`` expires: the next claim in the project
  releases it (and an admin can release claims at any time) in the same kind of transaction, row by
  row under a lock, so a slot freed once is claimed once. A released claim is remembered
  (``released_claims``): its annotator's late submission is stored only while the item still has a
  free slot, and the claim is taken again for it in the same transaction;
- a store made by an older version is brought up to date when it is opened (:meth:`Store._upgrade`), by
  the Alembic revisions of :mod:`feedback_app.migrations`, once, under a lock that concurrent openers queue on.

Gold items (:meth:`Store.set_gold`, :meth:`Store.import_gold`) live in a table of their own that nothing on
the annotator's path reads: an item marked gold is claimed, shown and stored like any other, and only the
admin's dashboard (:func:`gold_accuracy`) compares judgments with the gold ordering.

Reward-model scores of candidates (:meth:`Store.replace_scores`, written by ``align feedback score``) live in
a table of their own too. They change one thing, and only in a project whose ``uncertain_first`` setting is
on: the order in which :meth:`Store.next_item` claims items (the smallest gap between an item's two
best-scored candidates first, :meth:`Store.uncertainty`). Which items may be claimed, by how many annotators,
and everything else about claims stays as it is.

Head-to-head evaluations (:meth:`Store.add_head_to_head`, ``align feedback h2h``) are projects too, with ``task``
HEAD_TO_HEAD and the names of the two models they compare: each item holds the old model's and the new model's
answer to a held-out prompt, claimed, shown (in an order of its own per annotator) and judged as any item is.
Their prompts and answers are fixed when they are created, and their judgments are an evaluation: the export
(:mod:`feedback_app.export`) never turns them into training data. The rules that judge beside the experts (a
policies YAML's text and file name, :meth:`Store.set_project_policies`) are kept with the project, so every
report judges with them wherever it is read.

Lineage: every candidate records the model that wrote it (a generated one its directory and weights hash, an
imported one the name its file gives), a trained phase's ``lineage.json`` names its weights and the store
snapshots it trained on, and :meth:`Store.rounds` joins the two: which judgments led to which round of answers.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

ROLES = ("annotator", "admin")
DEFAULT_TAGS = ("factual error", "unsafe", "policy violation", "off tone", "hallucination", "other")
DEFAULT_GUIDELINES = """\
**Rank** the responses from best (1) to worst. Equal ranks are allowed when two answers are equally good.
Tick **All unacceptable** when no answer could be given to a customer as it stands.
**Tag** every problem you see in a response. If you can, **write a corrected answer** (start from the
response you would fix) and a **negative example**: a plausible answer that must never be given.
"""
MAX_TEXT = 20_000  # characters in a corrected answer, negative example or note
# The last schema version of the scheme before Alembic, frozen: meta.schema_version stays "6" in every store
# (see feedback_app.migrations). Schema changes since are Alembic revisions (feedback_app/migrations/versions),
# and a store's version is its alembic_version. 2: projects.claim_ttl_minutes, released_claims; 3: gold_items;
# 4: candidate_scores, projects.uncertain_first; 5: candidates.model_path, candidates.model_sha256 (the identity
# of the model that wrote each candidate); 6: projects.task, projects.baseline, projects.challenger (head-to-head
# evaluations); 6 is Alembic's baseline revision.
SCHEMA_VERSION = "6"
# What a project is for: "rank", experts rank candidates and their judgments are training data; "head_to_head",
# experts compare two models' answers on held-out prompts: an evaluation, never exported for training.
RANK = "rank"
HEAD_TO_HEAD = "head_to_head"
TASKS = (RANK, HEAD_TO_HEAD)
HEAD_TO_HEAD_GUIDELINES = """\
Two answers to the same question, in a random order: you are not told which model wrote which.
**Rank** the better answer 1 and the other 2, or give both rank 1 when neither is better.
Tick **All unacceptable** when neither answer could be given to a customer as it stands.
**Tag** every problem you see in an answer.
"""
MAX_MODEL_NAME = 512  # characters: the length of candidates.model, which records a side's name
# A head-to-head evaluation's rules (a policies YAML, alignment.evaluation.rules) are kept as text: a policies file
# is a few kB; the bound keeps a wrong file (a data set given by mistake) out of every project read.
MAX_POLICIES_TEXT = 200_000  # characters
MAX_POLICIES_NAME = 256  # characters: the file name the policies came from
DEFAULT_CLAIM_TTL_MINUTES = 24 * 60  # an annotator who has not submitted a claimed item in a day has left it
MAX_CANDIDATES_PER_ITEM = 8  # answer slots on the annotation page: more could never all be ranked
MAX_CLAIM_TTL_MINUTES = 366 * 24 * 60  # longer is "never" (0); the bound keeps the value a 32-bit integer
# What a trained model's folder says it was trained on (written by feedback_app.export.write_lineage after
# training, read by Store.rounds): in the phase's output folder, beside model/, or in the model folder itself.
LINEAGE_FILE = "lineage.json"
LINEAGE_HEADERS = ("round", "model", "weights sha256", "candidates", "judgments", "trained on")


class StoreError(ValueError):
    """A request the store refuses (unknown user, bad judgment, ...); the message is for the user."""


# ------------------------------------------------------------------------------------------------ schema

metadata = MetaData()

meta = Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("pw_hash", String(256), nullable=False),
    Column("session_epoch", Integer, nullable=False, default=0),  # bumped on logout / password change
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
)

projects = Table(
    "projects", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("guidelines", Text, nullable=False),
    Column("guideline_version", Integer, nullable=False, default=1),
    Column("tags", Text, nullable=False),  # JSON list of strings
    Column("candidates_per_item", Integer, nullable=False, default=4),
    Column("overlap", Integer, nullable=False, default=2),  # annotators per item
    Column("assign_batch", Integer, nullable=False, default=5),  # items claimed at once per annotator
    Column("created_at", Float, nullable=False),
    # Minutes after which a claimed, unsubmitted item may go to another annotator; 0: never. Added in
    # schema 2: older stores get the column (and this default) when opened, see feedback_app.migrations.
    Column("claim_ttl_minutes", Integer, nullable=False, default=DEFAULT_CLAIM_TTL_MINUTES,
           server_default=text(str(DEFAULT_CLAIM_TTL_MINUTES))),
    # Claim the items the reward model is least sure of first (see candidate_scores); off: the usual order.
    # Added in schema 4, like claim_ttl_minutes in 2.
    Column("uncertain_first", Boolean, nullable=False, default=False, server_default=false()),
    # What the project is for (RANK or HEAD_TO_HEAD) and, for a head-to-head evaluation, the names of the two
    # models it compares: the Candidate.model its items' two candidates record. Added in schema 6, like
    # claim_ttl_minutes in 2: every project of an older store is a ranking project.
    Column("task", String(16), nullable=False, default=RANK, server_default=text(f"'{RANK}'")),
    Column("baseline", String(MAX_MODEL_NAME), nullable=False, default="", server_default=text("''")),
    Column("challenger", String(MAX_MODEL_NAME), nullable=False, default="", server_default=text("''")),
    # A head-to-head evaluation's rules: the policies YAML's text and the name of the file it came from, kept with
    # the project so that every report (dashboard, CLI, pipeline) judges with the rules the evaluation was created
    # with, wherever it runs (the file's path may not exist there). "" for none. Added in Alembic revision
    # h2h_policies (migrations/versions/0002_h2h_policies.py): every older project has none.
    Column("policies_yaml", Text, nullable=False, default="", server_default=text("''")),
    Column("policies_name", String(MAX_POLICIES_NAME), nullable=False, default="", server_default=text("''")),
)

items = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("prompt", Text, nullable=False),  # JSON message list ending with a user turn
    Column("prompt_hash", String(64), nullable=False),
    Column("source", String(256), nullable=False, default=""),
    Column("n_assigned", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project_id", "prompt_hash"),
)

candidates = Table(
    "candidates", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False, index=True),
    Column("text", Text, nullable=False),
    Column("text_hash", String(64), nullable=False),
    Column("model", String(512), nullable=False, default=""),
    Column("generation", Text, nullable=False, default="{}"),  # JSON decoding settings
    Column("source", String(32), nullable=False, default="generated"),  # generated | imported
    Column("created_at", Float, nullable=False),
    # The identity of the model that wrote the candidate (schema 5, added to older stores like
    # claim_ttl_minutes in 2): the directory it was loaded from and a SHA-256 of its weights files, so a
    # round of candidates can be traced to the exact weights (and, through the lineage.json of a trained
    # model, to the judgments it trained on) even after the directory is overwritten. Empty for imported
    # candidates and for candidates stored before schema 5: only ``model`` (a name) is known of them.
    Column("model_path", Text, nullable=False, default="", server_default=text("''")),
    Column("model_sha256", String(64), nullable=False, default="", server_default=text("''")),
    UniqueConstraint("item_id", "text_hash"),
)

assignments = Table(
    "assignments", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("assigned_at", Float, nullable=False),
    UniqueConstraint("item_id", "user_id"),
)

# The last release of an annotator's open claim on an item (expired, or released by an admin): a late
# submission from a form shown before is told apart from a judgment of an item never assigned to them.
released_claims = Table(
    "released_claims", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("assigned_at", Float, nullable=False),  # when the released claim was made
    Column("released_at", Float, nullable=False),
    Column("reason", String(16), nullable=False),  # expired | released
    UniqueConstraint("item_id", "user_id"),
)

# Items an admin marked gold, with the known ordering of their candidates (schema 3; an older store gets
# the table when opened). A table of its own rather than a column of ``items``: the annotator's queries
# (claims, the item shown, progress) never read it, so nothing they are served can depend on it.
gold_items = Table(
    "gold_items", metadata,
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    Column("ordering", Text, nullable=False),  # JSON list of every candidate id of the item, best first
    Column("updated_at", Float, nullable=False),
)

# A reward model's score of each candidate (schema 4; an older store gets the table when opened), with the
# reward model's identity: the directory it was loaded from and a SHA-256 over its weights files, so a score
# can be traced to the exact weights even after the directory is overwritten by another training run. One
# scoring run writes every candidate of a project at once (:meth:`Store.replace_scores`).
candidate_scores = Table(
    "candidate_scores", metadata,
    Column("candidate_id", Integer, ForeignKey("candidates.id"), primary_key=True),
    Column("score", Float, nullable=False),
    Column("reward_model", Text, nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("scored_at", Float, nullable=False),
)

judgments = Table(
    "judgments", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("payload", Text, nullable=False),  # JSON, see Judgment
    Column("guideline_version", Integer, nullable=False),
    Column("revision", Integer, nullable=False),  # 1 for the first submission, +1 per revision
    Column("submission_key", String(64), nullable=False, unique=True),
    UniqueConstraint("user_id", "item_id", "revision"),  # concurrent revisions cannot share a number
    Index("ix_judgments_item", "item_id"),
)

drafts = Table(
    "drafts", metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    Column("payload", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("params", Text, nullable=False),
    Column("status", String(16), nullable=False),  # queued | running | done | failed
    Column("done", Integer, nullable=False, default=0),
    Column("total", Integer, nullable=False, default=0),
    Column("message", Text, nullable=False, default=""),
    Column("created_by", Integer, ForeignKey("users.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    session_epoch: int
    active: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    guidelines: str
    guideline_version: int
    tags: tuple[str, ...]
    candidates_per_item: int
    overlap: int
    assign_batch: int
    claim_ttl_minutes: int = DEFAULT_CLAIM_TTL_MINUTES  # 0: claims never expire
    uncertain_first: bool = False  # claim the items the reward model is least sure of first
    task: str = RANK  # RANK, or HEAD_TO_HEAD: an evaluation of two models, never training data
    baseline: str = ""  # head-to-head: the model name the old model's candidates record; "" when ranking
    challenger: str = ""  # head-to-head: the model name the new model's candidates record; "" when ranking
    policies_yaml: str = ""  # head-to-head: the rules judge's policies YAML (text); "" when none is stored
    policies_name: str = ""  # the file name those policies came from

    @property
    def is_head_to_head(self) -> bool:
        return self.task == HEAD_TO_HEAD


@dataclass(frozen=True)
class Candidate:
    id: int
    text: str
    model: str
    generation: dict[str, Any]
    model_path: str = ""  # the directory the generating model was loaded from; "" when imported
    model_sha256: str = ""  # SHA-256 of its weights files (feedback_app.scoring.weights_sha256); "" when imported


@dataclass(frozen=True)
class Item:
    id: int
    project_id: int
    prompt: list[dict[str, str]]
    candidates: tuple[Candidate, ...]  # in database order; the app shuffles per annotator


@dataclass(frozen=True)
class ModelSide:
    """One side of a head-to-head evaluation: the name its candidates record (``Candidate.model``) and, for
    generated answers, the model's directory, weights hash (:func:`feedback_app.scoring.weights_sha256`) and
    decoding settings; empty for answers imported from a file."""

    name: str
    path: str = ""
    sha256: str = ""
    generation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadToHeadAdded:
    """What :meth:`Store.add_head_to_head` stored."""

    project: Project
    added: int  # prompts added, each with its two answers
    identical: int  # of those, prompts both models answered with the same text: one candidate, never served
    already_present: int  # prompts the project had already: their stored answers (and judgments) are kept


@dataclass
class Judgment:
    """What an annotator says about one item. Candidate ids are the keys; ranks: lower = better, ties allowed."""

    ranks: dict[int, int] = field(default_factory=dict)
    all_unacceptable: bool = False
    tags: dict[int, list[str]] = field(default_factory=dict)
    correction_of: int | None = None  # the candidate the corrected answer replaces
    correction: str = ""
    negative: str = ""
    note: str = ""

    def to_json(self) -> str:
        return json.dumps({
            "ranks": {str(k): v for k, v in self.ranks.items()}, "all_unacceptable": self.all_unacceptable,
            "tags": {str(k): v for k, v in self.tags.items() if v}, "correction_of": self.correction_of,
            "correction": self.correction, "negative": self.negative, "note": self.note,
        }, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Judgment:
        d = json.loads(text)
        return cls(ranks={int(k): int(v) for k, v in d.get("ranks", {}).items()},
                   all_unacceptable=bool(d.get("all_unacceptable", False)),
                   tags={int(k): list(v) for k, v in d.get("tags", {}).items()},
                   correction_of=d.get("correction_of"), correction=d.get("correction", ""),
                   negative=d.get("negative", ""), note=d.get("note", ""))


@dataclass(frozen=True)
class StoredJudgment:
    id: int
    item_id: int
    user_id: int
    user_name: str
    created_at: float
    judgment: Judgment
    guideline_version: int
    revision: int


@dataclass(frozen=True)
class Progress:
    done: int  # items this annotator has submitted in the project
    assigned: int  # items claimed by (assigned to) this annotator, done or not
    available: int  # items that could still be claimed by this annotator


@dataclass(frozen=True)
class OpenClaims:
    """One annotator's claimed, unsubmitted items in a project (for the admin)."""

    user_id: int
    user_name: str
    count: int
    oldest_at: float  # when the oldest of them was claimed
    expired: int  # how many are past the project's claim expiry (released by the next claim in the project)


@dataclass(frozen=True)
class GoldScore:
    """One annotator's agreement with the gold orderings of a project (see :func:`gold_accuracy`)."""

    judged: int  # gold items the annotator has a current judgment of
    scored: int  # of those, judgments with a ranking to compare (not ticked "all unacceptable")
    accuracy: float | None  # mean pairwise agreement over the scored ones; None when none is scored


@dataclass(frozen=True)
class CandidateScore:
    """A reward model's score of one candidate, and which reward model gave it."""

    score: float
    reward_model: str  # the directory the reward model was loaded from
    weights_sha256: str  # over its weights files (see feedback_app.scoring.weights_sha256)
    scored_at: float


@dataclass(frozen=True)
class ScoreSummary:
    """The scores of a project's candidates, for the admin (:meth:`Store.score_summary`)."""

    candidates: int  # candidates with a score
    items: int  # items whose every candidate has a score: the ones ordered by uncertainty
    reward_models: tuple[tuple[str, str], ...]  # (directory, weights SHA-256) of the scores, one per run
    scored_at: float  # the latest scoring


@dataclass(frozen=True)
class Snapshot:
    """A store export a trained model learned from, as its ``lineage.json`` records it (the ``.provenance.json``
    written beside the exported file, :func:`feedback_app.export.materialise`)."""

    store: str  # the store's URL (password hidden) or, from an export before lineage, the path as given
    project: str | None  # None: every project of the store
    latest_judgment_id: int | None  # the newest judgment the export included; None in exports before lineage
    judgments: int
    pairs: int
    annotators: int | None  # None in exports before lineage
    exported_at: str
    this_store: bool  # the store and project the rounds are listed for (or all its projects)
    via: str = ""  # "": the model trained on it; else the reward model (directory) that did, for a PPO policy


@dataclass(frozen=True)
class Round:
    """One model's candidates in a project (:meth:`Store.rounds`): which weights wrote them, how much was
    judged, and what those weights were trained on."""

    number: int  # 1 = the model with no snapshot of this store (or the oldest), then by the snapshot's judgment
    model: str  # the name the candidates record (the generation settings' model, or the imported file's)
    model_path: str  # the directory it was loaded from; "" for imported candidates
    weights_sha256: str  # over its weights files; "" for imported candidates (and those stored before schema 5)
    candidates: int
    judgments: int  # current judgments (latest per annotator and item) of items with one of its candidates
    first_candidate_id: int
    snapshots: tuple[Snapshot, ...]  # every snapshot its lineage.json names, this store's and others
    lineage: str  # the lineage.json that describes these weights; "" when none was found
    note: str = ""  # why no lineage is shown although a lineage.json was found (other weights, unreadable)

    @property
    def store_snapshots(self) -> tuple[Snapshot, ...]:
        """The snapshots of the store (and project) the rounds were listed for."""
        return tuple(s for s in self.snapshots if s.this_store)


@dataclass(frozen=True)
class Job:
    id: int
    project_id: int
    kind: str
    params: dict[str, Any]
    status: str
    done: int
    total: int
    message: str
    created_at: float
    updated_at: float


# ------------------------------------------------------------------------------------------------ passwords


def hash_password(password: str, *, n: int = 2**15, r: int = 8, p: int = 1) -> str:
    """scrypt with a random 16-byte salt; the parameters are stored with the hash (~0.1 s per check)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                         maxmem=128 * 1024 * 1024, dklen=32)
    return hmac.compare_digest(got.hex(), digest)


@functools.cache
def _dummy_hash() -> str:
    """Checked for unknown users, so they cost the same time as a real one (made on first use, not at import)."""
    return hash_password(secrets.token_hex(8))


def prompt_hash(prompt: Sequence[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps([[m["role"], m["content"]] for m in prompt]).encode()).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()


def database_url(store: str | Path) -> str:
    """A SQLAlchemy URL for a store argument: a URL as given, a path as an SQLite file."""
    text = str(store)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def is_store(path: str | Path) -> bool:
    """True for a database URL or an SQLite file (checked by its header, not its name)."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        return True
    p = Path(text)
    if not p.is_file():
        return False
    with p.open("rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


# ------------------------------------------------------------------------------------------------ store


class Store:
    """All reads and writes of the feedback database. Thread-safe: one short transaction per call."""

    def __init__(self, store: str | Path, *, create: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.url = database_url(store)
        # The time of claims (made, expired, released): tests replace it to move time without sleeping.
        self.clock = clock
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            path = Path(self.url.removeprefix("sqlite:///"))
            if not create and not path.exists():
                raise StoreError(f"{path}: no feedback store here (create one with `align app users add`)")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30},
                                        pool_size=8, max_overflow=56, pool_timeout=60)
            _sqlite_pragmas(self.engine)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=8, max_overflow=32)
        self._writer: Engine = self.engine.execution_options(begin="IMMEDIATE")
        self._upgrade(create)
        self._secret: bytes | None = None

    def _upgrade(self, create: bool) -> None:
        """Create the store (``create``) or bring one made by an older version to the head revision of
        :mod:`feedback_app.migrations`.

        Runs on every open, read-only uses included (the queries name the new columns), and costs one read of the
        store's revision when the store is current. Otherwise one write transaction: concurrent openers queue
        on the schema lock, and the later ones find nothing left to do (the revision is read again under it)."""
        from feedback_app import migrations

        with self.read() as c:
            if migrations.current(c) == migrations.head():
                return
        with self.schema_write() as c:
            if migrations.upgrade(c, create=create) == "created":
                # The installation's random secret (session cookies), made with the store in its transaction:
                # a store at the head revision has one.
                c.execute(insert(meta).values(key="secret", value=secrets.token_hex(32)))

    @contextmanager
    def schema_write(self) -> Iterator[Connection]:
        """A write transaction that changes the schema: one at a time (:meth:`_schema_lock`) and, on SQLite, with
        foreign keys off until it ends. SQLite changes most of a table by copying it (create, copy, drop, rename:
        Alembic's batch mode); with foreign keys on, the drop counts every reference to the old table as broken
        (deferred or not), and the copy renamed into its place does not mend the count, so the change fails. The
        pragma does nothing inside a transaction, so it is set before the BEGIN and set back after;
        :func:`feedback_app.migrations.upgrade` checks every reference itself before the commit."""
        with self._writer.connect() as c:
            raw = c.connection.dbapi_connection if self.is_sqlite else None
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=OFF")  # the driver's own: no BEGIN before it (isolation_level None)
            try:
                with c.begin():
                    self._schema_lock(c)
                    yield c
            finally:
                if raw is not None:
                    raw.execute("PRAGMA foreign_keys=ON")

    def _schema_lock(self, c: Connection) -> None:
        """Inside a write that changes the schema: one such transaction at a time. SQLite's BEGIN IMMEDIATE
        already queues writers; on PostgreSQL two openers would otherwise both create a missing table (or run a
        revision) and one would fail."""
        if not self.is_sqlite:
            c.execute(text("SELECT pg_advisory_xact_lock(7460212)"))  # any constant, the same in every process

    # -------------------------------------------------------------------------------- transactions

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._writer.begin() as c:
            yield c

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as c:
            yield c

    def close(self) -> None:
        self.engine.dispose()

    def secret(self) -> bytes:
        """The installation's random secret (signs session cookies); made when the store was created."""
        if self._secret is None:
            with self.read() as c:
                self._secret = bytes.fromhex(c.execute(select(meta.c.value).where(meta.c.key == "secret")).scalar_one())
        return self._secret

    # -------------------------------------------------------------------------------- users

    def add_user(self, name: str, role: str, password: str) -> User:
        name = name.strip()
        if not name or len(name) > 128 or any(ch.isspace() for ch in name):
            raise StoreError("a user name is 1-128 characters without spaces")
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, not '{role}'")
        if len(password) < 8:
            raise StoreError("a password needs at least 8 characters")
        pw = hash_password(password)
        try:
            with self.write() as c:
                c.execute(insert(users).values(name=name, role=role, pw_hash=pw, session_epoch=0, active=True,
                                               created_at=time.time()))
        except IntegrityError:
            raise StoreError(f"user '{name}' already exists") from None
        user = self.get_user(name)
        assert user is not None
        return user

    def set_password(self, name: str, password: str) -> None:
        if len(password) < 8:
            raise StoreError("a password needs at least 8 characters")
        with self.write() as c:
            n = c.execute(update(users).where(users.c.name == name).values(
                pw_hash=hash_password(password), session_epoch=users.c.session_epoch + 1)).rowcount
        if not n:
            raise StoreError(f"no user '{name}'")

    def set_active(self, name: str, active: bool) -> None:
        with self.write() as c:
            n = c.execute(update(users).where(users.c.name == name).values(
                active=active, session_epoch=users.c.session_epoch + 1)).rowcount
        if not n:
            raise StoreError(f"no user '{name}'")

    def end_sessions(self, user_id: int) -> None:
        """Invalidate every session cookie of this user (logout)."""
        with self.write() as c:
            c.execute(update(users).where(users.c.id == user_id).values(session_epoch=users.c.session_epoch + 1))

    def get_user(self, name: str) -> User | None:
        with self.read() as c:
            row = c.execute(select(users).where(users.c.name == name)).first()
        return _user(row) if row else None

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password matches and the account is active; constant work otherwise."""
        with self.read() as c:
            row = c.execute(select(users).where(users.c.name == name.strip())).first()
        ok = check_password(password, row.pw_hash if row else _dummy_hash())
        return _user(row) if row is not None and ok and row.active else None

    def list_users(self) -> list[User]:
        with self.read() as c:
            return [_user(r) for r in c.execute(select(users).order_by(users.c.name))]

    # -------------------------------------------------------------------------------- projects

    def ensure_project(self, name: str = "default") -> Project:
        with self.write() as c:
            if c.execute(select(projects.c.id).where(projects.c.name == name)).first() is None:
                c.execute(insert(projects).values(
                    name=name, guidelines=DEFAULT_GUIDELINES, guideline_version=1, tags=json.dumps(DEFAULT_TAGS),
                    candidates_per_item=4, overlap=2, assign_batch=5, claim_ttl_minutes=DEFAULT_CLAIM_TTL_MINUTES,
                    uncertain_first=False, created_at=time.time()))
        project = self.project(name)
        assert project is not None
        return project

    def project(self, key: int | str) -> Project | None:
        col = projects.c.id if isinstance(key, int) else projects.c.name
        with self.read() as c:
            row = c.execute(select(projects).where(col == key)).first()
        return _project(row) if row else None

    def list_projects(self) -> list[Project]:
        with self.read() as c:
            return [_project(r) for r in c.execute(select(projects).order_by(projects.c.id))]

    def remember_project(self, user_id: int, project_id: int) -> None:
        """The project this user last chose, kept across logins and restarts (a ``meta`` row: no schema change)."""
        key, value = f"last_project:{user_id}", str(project_id)
        for _ in range(2):  # two first choices at once: the second insert collides once, then updates
            try:
                with self.write() as c:
                    if not c.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount:
                        c.execute(insert(meta).values(key=key, value=value))
                return
            except IntegrityError:
                continue

    def remembered_project(self, user_id: int) -> Project | None:
        """The project this user last chose, if it still exists."""
        with self.read() as c:
            value = c.execute(select(meta.c.value).where(meta.c.key == f"last_project:{user_id}")).scalar()
        return self.project(int(value)) if value and value.isdigit() else None

    def work_left(self, user: User, project: Project) -> int:
        """Prompts this annotator could still judge in the project: claimed and open, plus claimable."""
        p = self.progress(user, project)
        return p.assigned - p.done + p.available

    def projects_with_work(self, user: User) -> list[tuple[Project, int]]:
        """(project, prompts left for this annotator) for every project with any, in project order."""
        out = []
        for project in self.list_projects():
            n = self.work_left(user, project)
            if n:
                out.append((project, n))
        return out

    def update_project(self, project_id: int, *, guidelines: str | None = None, tags: Sequence[str] | None = None,
                       candidates_per_item: int | None = None, overlap: int | None = None,
                       assign_batch: int | None = None, claim_ttl_minutes: int | None = None,
                       uncertain_first: bool | None = None) -> Project:
        """Changed guidelines get a new version number; every judgment records the version it was made under.

        ``claim_ttl_minutes``: minutes before a claimed, unsubmitted item may go to another annotator (0: never).
        ``uncertain_first``: claim items in order of the reward model's uncertainty (see :meth:`uncertainty`)."""
        values: dict[str, Any] = {}
        if tags is not None:
            clean = [t.strip() for t in tags if t.strip()]
            if len(set(clean)) != len(clean):
                raise StoreError("tags must be distinct")
            values["tags"] = json.dumps(clean)
        for key, value, low in (("candidates_per_item", candidates_per_item, 2), ("overlap", overlap, 1),
                                ("assign_batch", assign_batch, 1)):
            if value is not None:
                if int(value) < low:
                    raise StoreError(f"{key.replace('_', ' ')} must be at least {low}")
                if key == "candidates_per_item" and int(value) > MAX_CANDIDATES_PER_ITEM:
                    raise StoreError(f"candidates per item go up to {MAX_CANDIDATES_PER_ITEM} (the answer slots of "
                                     f"the annotation page), not {int(value)}")
                values[key] = int(value)
        if claim_ttl_minutes is not None:
            if not 0 <= int(claim_ttl_minutes) <= MAX_CLAIM_TTL_MINUTES:
                raise StoreError(f"claim expiry goes from 0 (never) to {MAX_CLAIM_TTL_MINUTES} minutes (a year), "
                                 f"not {int(claim_ttl_minutes)}")
            values["claim_ttl_minutes"] = int(claim_ttl_minutes)
        if uncertain_first is not None:
            if not isinstance(uncertain_first, bool):  # "false" would be truthy: refuse rather than guess
                raise StoreError(f"uncertain_first is true or false, not {uncertain_first!r}")
            values["uncertain_first"] = uncertain_first
        with self.write() as c:
            row = c.execute(select(projects).where(projects.c.id == project_id)).first()
            if row is None:
                raise StoreError(f"no project {project_id}")
            if row.task == HEAD_TO_HEAD and values.get("candidates_per_item", 2) != 2:
                raise StoreError("a head-to-head evaluation compares 2 answers per prompt; its responses per prompt "
                                 "stay 2")
            if guidelines is not None and guidelines.strip() != row.guidelines.strip():
                values["guidelines"] = guidelines
                values["guideline_version"] = row.guideline_version + 1
            if values:
                c.execute(update(projects).where(projects.c.id == project_id).values(**values))
        project = self.project(project_id)
        assert project is not None
        return project

    # -------------------------------------------------------------------------------- prompts and candidates

    def add_prompts(self, project_id: int, prompts: Sequence[list[dict[str, str]]],
                    source: str = "") -> tuple[int, int]:
        """Insert prompts (message lists); returns (added, already present). One transaction."""
        added = 0
        now = time.time()
        with self.write() as c:
            _refuse_head_to_head(c, select(projects.c.task).where(projects.c.id == project_id))
            existing = set(c.execute(select(items.c.prompt_hash).where(items.c.project_id == project_id)).scalars())
            for prompt in prompts:
                h = prompt_hash(prompt)
                if h in existing:
                    continue
                existing.add(h)
                c.execute(insert(items).values(project_id=project_id, prompt=json.dumps(prompt, ensure_ascii=False),
                                               prompt_hash=h, source=source, n_assigned=0, created_at=now))
                added += 1
        return added, len(prompts) - added

    def item_id_for_prompt(self, project_id: int, prompt: Sequence[dict[str, str]]) -> int | None:
        with self.read() as c:
            return c.execute(select(items.c.id).where(items.c.project_id == project_id,
                                                      items.c.prompt_hash == prompt_hash(prompt))).scalar()

    def add_candidates(self, item_id: int, answers: Sequence[tuple[str, str, dict[str, Any]]],
                       source: str = "generated", *, model_path: str = "", model_sha256: str = "") -> int:
        """(text, model, decoding settings) per answer; blank and duplicate texts are skipped. Returns added.

        ``model_path`` and ``model_sha256``: the identity of the model that wrote every answer of the call (its
        resolved directory and :func:`feedback_app.scoring.weights_sha256`); empty when it is not known (an
        imported file names a model at most)."""
        if model_sha256 and not _is_sha256(model_sha256):
            raise StoreError(f"model_sha256 is a SHA-256 in hex (64 characters), not {model_sha256!r}")
        if model_sha256 and not model_path.strip():
            raise StoreError("a weights hash needs the model directory it was computed from (model_path)")
        added = 0
        now = time.time()
        with self.write() as c:
            _refuse_head_to_head(c, select(projects.c.task).join(items).where(items.c.id == item_id))
            seen = set(c.execute(select(candidates.c.text_hash).where(candidates.c.item_id == item_id)).scalars())
            for text, model, generation in answers:
                h = text_hash(text)
                if not text.strip() or h in seen:
                    continue
                seen.add(h)
                if len(seen) > MAX_CANDIDATES_PER_ITEM:  # raised inside the transaction: nothing of the call is kept
                    raise StoreError(f"item {item_id} would have more than {MAX_CANDIDATES_PER_ITEM} candidates (the "
                                     "answer slots of the annotation page)")
                c.execute(insert(candidates).values(item_id=item_id, text=text, text_hash=h, model=model,
                                                    generation=json.dumps(generation), source=source,
                                                    model_path=model_path, model_sha256=model_sha256,
                                                    created_at=now))
                added += 1
        return added

    def add_head_to_head(self, name: str, baseline: ModelSide | str, challenger: ModelSide | str,
                         rows: Sequence[tuple[Sequence[dict[str, str]], str, str]], *, overlap: int | None = None,
                         source: str = "", candidate_source: str = "generated",
                         policies: tuple[str, str] | None = None) -> HeadToHeadAdded:
        """Create (or extend) the head-to-head evaluation ``name``: per row (prompt messages, the baseline's
        answer, the challenger's answer) an item with the two answers as its candidates, each recording its
        side's name, directory, weights hash and decoding settings (:class:`ModelSide`; a plain string is a
        name alone). All or nothing: every row is checked first, then everything is written in one transaction.

        The project gets ``task`` HEAD_TO_HEAD, two candidates per item and ``overlap`` annotators per prompt
        (default 2); everything else (claims, display order shuffled per annotator, judgments) is the ranking
        projects'. Refused: a name that is a ranking project, or a head-to-head evaluation of other models (or
        of the same names with other weights: the directory was trained again since); a blank prompt or answer;
        a prompt given twice. A prompt the project already has keeps its stored answers (counted as already
        present). When both answers are the same text (after stripping) the item keeps one candidate, the
        baseline's: it is an automatic tie that is never served (an item is claimed with 2 candidates or more),
        rather than two rows of one text (``candidates`` allows a text once per item) shown for a forced tie.

        ``policies``: (YAML text, file name) of the rules that judge beside the experts, stored with the project
        (checked as :meth:`set_project_policies` checks them; a new evaluation's, or replacing an extended one's);
        None keeps what the project has."""
        if policies is not None:
            _check_policies(*policies)
            policies = (policies[0], policies[1] if policies[0] else "")  # no name without rules
        base = baseline if isinstance(baseline, ModelSide) else ModelSide(str(baseline))
        chal = challenger if isinstance(challenger, ModelSide) else ModelSide(str(challenger))
        name = name.strip()
        if not name or len(name) > 128:
            raise StoreError("a project name is 1-128 characters")
        for side, label in ((base, "baseline"), (chal, "challenger")):
            if not side.name.strip() or len(side.name) > MAX_MODEL_NAME:
                raise StoreError(f"the {label}'s name is 1-{MAX_MODEL_NAME} characters")
            if side.sha256 and not _is_sha256(side.sha256):
                raise StoreError(f"the {label}'s weights hash is a SHA-256 in hex (64 characters), "
                                 f"not {side.sha256!r}")
            if side.sha256 and not side.path.strip():
                raise StoreError(f"the {label}'s weights hash needs the model directory it was computed from")
        if base.name == chal.name:
            raise StoreError(f"the baseline and the challenger are both named '{base.name}': the two sides are told "
                             "apart by their names, give them different ones")
        if overlap is not None and int(overlap) < 1:
            raise StoreError("overlap must be at least 1")
        if candidate_source not in ("generated", "imported"):
            raise StoreError(f"candidate_source is generated or imported, not {candidate_source!r}")
        if not rows:
            raise StoreError("no prompts to compare")
        prepared: list[tuple[str, list[dict[str, str]], str, str]] = []
        first_row: dict[str, int] = {}
        for i, row in enumerate(rows, start=1):
            prompt, base_answer, chal_answer = row
            prompt = list(prompt)
            if not (prompt and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                   and isinstance(m.get("content"), str) for m in prompt)):
                raise StoreError(f"row {i}: a prompt is a non-empty list of messages (role, content)")
            if not prompt[-1]["content"].strip():
                raise StoreError(f"row {i}: the prompt is empty")
            for answer, label in ((base_answer, "baseline"), (chal_answer, "challenger")):
                if not isinstance(answer, str) or not answer.strip():
                    raise StoreError(f"row {i}: the {label}'s answer is empty")
            h = prompt_hash(prompt)
            if h in first_row:  # two answer pairs for one prompt: which to keep would be a guess
                raise StoreError(f"row {i}: the same prompt as row {first_row[h]}; give each prompt once")
            first_row[h] = i
            prepared.append((h, prompt, base_answer, chal_answer))
        for attempt in range(2):  # two first calls with one new name: the second insert collides once, then extends
            try:
                return self._write_head_to_head(name, base, chal, prepared, overlap, source, candidate_source,
                                                policies)
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _write_head_to_head(self, name: str, base: ModelSide, chal: ModelSide,
                            prepared: Sequence[tuple[str, list[dict[str, str]], str, str]], overlap: int | None,
                            source: str, candidate_source: str,
                            policies: tuple[str, str] | None) -> HeadToHeadAdded:
        """The one transaction of :meth:`add_head_to_head` (its arguments checked)."""
        now = time.time()
        added = identical = present = 0
        with self.write() as c:
            # Locked: a second call extending the project queues behind this one (PostgreSQL; SQLite's BEGIN
            # IMMEDIATE already queues writers), so both see every prompt the other stored.
            row = c.execute(select(projects).where(projects.c.name == name).with_for_update()).first()
            if row is None:
                project_id = int(c.execute(insert(projects).values(
                    name=name, guidelines=HEAD_TO_HEAD_GUIDELINES, guideline_version=1,
                    tags=json.dumps(DEFAULT_TAGS), candidates_per_item=2, overlap=int(overlap or 2), assign_batch=5,
                    claim_ttl_minutes=DEFAULT_CLAIM_TTL_MINUTES, uncertain_first=False, task=HEAD_TO_HEAD,
                    baseline=base.name, challenger=chal.name, policies_yaml=policies[0] if policies else "",
                    policies_name=policies[1] if policies else "", created_at=now)).inserted_primary_key[0])
            else:
                _check_head_to_head(_project(row), base.name, chal.name)
                project_id = int(row.id)
                # One name is one set of weights within an evaluation: answers of a directory trained again
                # would be counted as the same model's.
                known = c.execute(select(candidates.c.model, candidates.c.model_sha256).join(items)
                                  .where(items.c.project_id == project_id, candidates.c.model_sha256 != "")
                                  .distinct()).all()
                for model, sha in known:
                    for side, label in ((base, "baseline"), (chal, "challenger")):
                        if model == side.name and side.sha256 and sha != side.sha256:
                            raise StoreError(
                                f"project '{name}': the {label} '{side.name}' wrote its answers with other weights "
                                f"(sha256 {sha[:12]}..., now {side.sha256[:12]}...): the directory was trained "
                                "again since; compare the new weights in a project of their own")
                if overlap is not None and int(overlap) != row.overlap:
                    c.execute(update(projects).where(projects.c.id == project_id).values(overlap=int(overlap)))
                if policies is not None:
                    c.execute(update(projects).where(projects.c.id == project_id).values(
                        policies_yaml=policies[0], policies_name=policies[1]))
            existing = set(c.execute(select(items.c.prompt_hash).where(items.c.project_id == project_id)).scalars())
            for h, prompt, base_answer, chal_answer in prepared:
                if h in existing:
                    present += 1
                    continue
                item_id = c.execute(insert(items).values(
                    project_id=project_id, prompt=json.dumps(prompt, ensure_ascii=False), prompt_hash=h,
                    source=source, n_assigned=0, created_at=now)).inserted_primary_key[0]
                added += 1
                same = text_hash(base_answer) == text_hash(chal_answer)
                identical += same
                for side, answer in ((base, base_answer), (chal, chal_answer))[:1 if same else 2]:
                    c.execute(insert(candidates).values(
                        item_id=item_id, text=answer, text_hash=text_hash(answer), model=side.name,
                        generation=json.dumps(side.generation), source=candidate_source, model_path=side.path,
                        model_sha256=side.sha256, created_at=now))
            project = _project(c.execute(select(projects).where(projects.c.id == project_id)).one())
        return HeadToHeadAdded(project, added, identical, present)

    def set_project_policies(self, project_id: int, policies_yaml: str, policies_name: str = "") -> Project:
        """Store (or replace) the rules of a head-to-head evaluation: a policies YAML's text and the name of the
        file it came from, which every report then judges with (:func:`feedback_app.headtohead.project_summary`).
        Empty text removes them. Checked before anything is written: the text must be valid policies
        (:func:`alignment.evaluation.rules.parse_rules`: an AlignError naming ``policies_name``, the line and the
        field), the project a head-to-head evaluation."""
        _check_policies(policies_yaml, policies_name)
        with self.write() as c:
            row = c.execute(select(projects.c.task).where(projects.c.id == project_id)).first()
            if row is None:
                raise StoreError(f"no project {project_id}")
            if row.task != HEAD_TO_HEAD:
                raise StoreError("rules judge head-to-head evaluations: this is a ranking project")
            c.execute(update(projects).where(projects.c.id == project_id).values(
                policies_yaml=policies_yaml, policies_name=policies_name if policies_yaml else ""))
        project = self.project(project_id)
        assert project is not None
        return project

    def check_head_to_head(self, name: str, baseline: str, challenger: str) -> Project | None:
        """Refuse (StoreError) what :meth:`add_head_to_head` would refuse for the project's name: a ranking
        project, or a head-to-head evaluation of other models. Returns the existing project, None when new.
        For a caller that generates answers first: a wrong name fails before the models run."""
        project = self.project(name.strip())
        if project is not None:
            _check_head_to_head(project, baseline, challenger)
        return project

    def items_short_of_candidates(self, project_id: int, k: int) -> list[tuple[int, list[dict[str, str]], int]]:
        """(item id, prompt, candidates missing) for every item with fewer than ``k`` candidates."""
        n = func.count(candidates.c.id)
        q = (select(items.c.id, items.c.prompt, n).select_from(items.outerjoin(candidates))
             .where(items.c.project_id == project_id).group_by(items.c.id, items.c.prompt).having(n < k)
             .order_by(items.c.id))
        with self.read() as c:
            return [(r[0], json.loads(r[1]), k - r[2]) for r in c.execute(q)]

    def item(self, item_id: int) -> Item | None:
        with self.read() as c:
            row = c.execute(select(items).where(items.c.id == item_id)).first()
            if row is None:
                return None
            cands = c.execute(select(candidates).where(candidates.c.item_id == item_id)
                              .order_by(candidates.c.id)).all()
        return Item(row.id, row.project_id, json.loads(row.prompt), tuple(_candidate(r) for r in cands))

    def project_items(self, project_id: int) -> list[Item]:
        """Every item of the project with its candidates (in stored order), by item id: two queries, not one
        per item (a head-to-head report reads them all)."""
        with self.read() as c:
            rows = c.execute(select(items.c.id, items.c.prompt).where(items.c.project_id == project_id)
                             .order_by(items.c.id)).all()
            cands = c.execute(select(candidates).join(items).where(items.c.project_id == project_id)
                              .order_by(candidates.c.item_id, candidates.c.id)).all()
        by_item: dict[int, list[Candidate]] = {}
        for r in cands:
            by_item.setdefault(int(r.item_id), []).append(_candidate(r))
        return [Item(int(r.id), project_id, json.loads(r.prompt), tuple(by_item.get(int(r.id), ()))) for r in rows]

    def counts(self, project_id: int) -> dict[str, int]:
        """Prompts, candidates, items ready (2+ candidates), judgments (latest per annotator and item)."""
        with self.read() as c:
            n_items = c.execute(select(func.count()).select_from(items)
                                .where(items.c.project_id == project_id)).scalar_one()
            per_item = select(candidates.c.item_id, func.count().label("n")).join(items).where(
                items.c.project_id == project_id).group_by(candidates.c.item_id).subquery()
            n_cands = c.execute(select(func.coalesce(func.sum(per_item.c.n), 0))).scalar_one()
            ready = c.execute(select(func.count()).select_from(per_item).where(per_item.c.n >= 2)).scalar_one()
            latest = select(judgments.c.user_id, judgments.c.item_id).join(items).where(
                items.c.project_id == project_id).distinct().subquery()
            n_judged = c.execute(select(func.count()).select_from(latest)).scalar_one()
        return {"prompts": int(n_items), "candidates": int(n_cands), "ready": int(ready), "judgments": int(n_judged)}

    # -------------------------------------------------------------------------------- gold items

    def set_gold(self, project_id: int, item_id: int, ordering: Sequence[int] | None) -> None:
        """Mark an item of the project as gold with ``ordering``: every candidate id of the item once, best
        first (ties are not expressible: a gold item has one right order). ``None`` clears the mark.

        Annotators are served a gold item like any other; only the admin's dashboard reads the ordering."""
        with self.write() as c:
            ids = self._gold_candidates(c, project_id, item_id)
            if ordering is not None:
                problem = _gold_problem(list(ordering), ids)
                if problem:
                    raise StoreError(f"item {item_id}: {problem}")
            self._write_gold(c, item_id, None if ordering is None else [int(x) for x in ordering])

    def gold(self, project_id: int) -> dict[int, list[int]]:
        """item id -> its gold ordering (candidate ids, best first) for every gold item of the project."""
        q = (select(gold_items.c.item_id, gold_items.c.ordering).join(items)
             .where(items.c.project_id == project_id).order_by(gold_items.c.item_id))
        with self.read() as c:
            return {int(r.item_id): [int(x) for x in json.loads(r.ordering)] for r in c.execute(q)}

    def import_gold(self, project_id: int, path: str | Path, *, source: str | None = None) -> tuple[int, int]:
        """Gold orderings from a JSONL file; returns (items marked gold, items cleared).

        One object per line: the item as ``item_id`` or ``prompt`` (as in the prompts file: a string is one
        user turn, or a list of messages), and ``ordering``, best first: every response of the item once, as
        letters (``"A"`` is the item's first stored candidate: the first of ``responses`` in the candidates
        file it came from) or 0-based indices in the same order; ``null`` clears the item's mark. Blank lines
        are skipped. The first bad row is refused with a StoreError naming ``source`` (default: the path),
        line and field, and then nothing is written: the rows are checked first, then written in one
        transaction."""
        name = source or str(path)
        try:
            raw = Path(path).read_bytes().decode("utf-8")
        except OSError as e:  # strerror only: the message must not name the server's folders
            raise StoreError(f"{name}: cannot read the file ({e.strerror or type(e).__name__})") from None
        except UnicodeDecodeError:
            raise StoreError(f"{name}: not UTF-8 text") from None
        if self.project(project_id) is None:
            raise StoreError(f"no project {project_id}")
        rows: dict[int, list[int] | None] = {}
        first_line: dict[int, int] = {}
        # split on "\n" only: str.splitlines would also split inside a JSON string holding U+2028 and friends
        for line, text_ in enumerate(raw.split("\n"), start=1):
            if not text_.strip():
                continue
            bad = functools.partial(_gold_file_error, name, line)
            try:
                row = json.loads(text_)
            except json.JSONDecodeError as e:
                raise bad(f"not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise bad("each line is a JSON object with 'item_id' or 'prompt', and 'ordering'")
            item_id, key = self._gold_row_item(project_id, row, bad)
            if item_id in first_line:
                raise bad(f"names the same item as line {first_line[item_id]}", key)
            if "ordering" not in row:
                raise bad("missing: the item's responses best first (null clears the item's gold mark)",
                          "ordering")
            first_line[item_id] = line
            with self.read() as c:
                ids = self._gold_candidates(c, project_id, item_id)
            rows[item_id] = None if row["ordering"] is None else _gold_positions(row["ordering"], ids, bad)
        with self.write() as c:
            for item_id, ordering in rows.items():
                self._write_gold(c, item_id, ordering)
        marked = sum(1 for o in rows.values() if o is not None)
        return marked, len(rows) - marked

    def _gold_row_item(self, project_id: int, row: dict[str, Any],
                       bad: Callable[..., StoreError]) -> tuple[int, str]:
        """The item a gold file row names, and the field that named it."""
        item_id: int | None = None
        if "item_id" in row:
            value = row["item_id"]
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad("must be an integer item id", "item_id")
            with self.read() as c:
                found = c.execute(select(items.c.id).where(items.c.id == value,
                                                           items.c.project_id == project_id)).scalar()
            if found is None:
                raise bad(f"no item {value} in this project", "item_id")
            item_id = int(found)
        if "prompt" in row:
            prompt = row["prompt"]
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if not (isinstance(prompt, list) and prompt and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in prompt)):
                raise bad("must be the prompt's text or a list of messages (role, content)", "prompt")
            by_prompt = self.item_id_for_prompt(project_id, prompt)
            if by_prompt is None:
                raise bad("no prompt with this text in this project", "prompt")
            if item_id is not None and by_prompt != item_id:
                raise bad(f"is the prompt of item {by_prompt}, not of item_id {item_id}", "prompt")
            item_id = by_prompt
        if item_id is None:
            raise bad("name the item by 'item_id' or 'prompt'", "item_id")
        return item_id, "item_id" if "item_id" in row else "prompt"

    @staticmethod
    def _gold_candidates(c: Connection, project_id: int, item_id: int) -> list[int]:
        """The item's candidate ids in stored order; refuses an item that is not in the project."""
        found = c.execute(select(items.c.id).where(items.c.id == item_id, items.c.project_id == project_id)).first()
        if found is None:
            raise StoreError(f"no item {item_id} in project {project_id}")
        return [int(x) for x in c.execute(select(candidates.c.id).where(candidates.c.item_id == item_id)
                                          .order_by(candidates.c.id)).scalars()]

    @staticmethod
    def _write_gold(c: Connection, item_id: int, ordering: list[int] | None) -> None:
        """Inside a write: replace (or, for None, remove) the item's gold ordering."""
        # The item row locked first: two admins marking one item queue on PostgreSQL instead of both
        # inserting after the delete (SQLite's BEGIN IMMEDIATE already queues them).
        c.execute(select(items.c.id).where(items.c.id == item_id).with_for_update())
        c.execute(delete(gold_items).where(gold_items.c.item_id == item_id))
        if ordering is not None:
            c.execute(insert(gold_items).values(item_id=item_id, ordering=json.dumps(ordering), updated_at=time.time()))

    # -------------------------------------------------------------------------------- reward-model scores

    def project_candidates(self, project_id: int) -> list[tuple[int, list[dict[str, str]], int, str]]:
        """(item id, prompt, candidate id, text) of every candidate in the project, by item and candidate id."""
        q = (select(items.c.id, items.c.prompt, candidates.c.id, candidates.c.text)
             .select_from(items.join(candidates)).where(items.c.project_id == project_id)
             .order_by(items.c.id, candidates.c.id))
        prompts: dict[int, list[dict[str, str]]] = {}
        with self.read() as c:
            rows = c.execute(q).all()
        return [(int(item_id), prompts.setdefault(int(item_id), json.loads(prompt)), int(cid), text_)
                for item_id, prompt, cid, text_ in rows]

    def replace_scores(self, project_id: int, scores: Mapping[int, float], *, reward_model: str,
                       weights_sha256: str) -> int:
        """Replace every reward-model score in the project by ``scores`` (candidate id -> score), all from the
        reward model at ``reward_model`` whose weights hash to ``weights_sha256``; returns how many were stored.

        One transaction: a scoring run that dies before it leaves the previous scores whole, and a claim never
        orders by a mix of two runs. A candidate of the project missing from ``scores`` (added while the run
        went on) is left without a score; its item then counts as unscored (:meth:`uncertainty`)."""
        if not reward_model.strip():
            raise StoreError("name the reward model the scores come from")
        if not _is_sha256(weights_sha256):
            raise StoreError(f"weights_sha256 is a SHA-256 in hex (64 characters), not {weights_sha256!r}")
        clean: dict[int, float] = {}
        for cid, score in scores.items():
            try:
                value = float(score)
            except (TypeError, ValueError):
                raise StoreError(f"candidate {cid}: a score is a number, not {score!r}; nothing was stored") from None
            if not math.isfinite(value):  # NaN sorts differently on each database: never store one
                raise StoreError(f"candidate {cid}: the reward model's score is {value}; nothing was stored")
            clean[int(cid)] = value
        in_project = select(candidates.c.id).join(items).where(items.c.project_id == project_id)
        now = time.time()
        with self.write() as c:
            # The project row locked first: two scoring runs of one project queue on PostgreSQL instead of
            # both inserting after their deletes (SQLite's BEGIN IMMEDIATE already queues them).
            if c.execute(select(projects.c.id).where(projects.c.id == project_id).with_for_update()).first() is None:
                raise StoreError(f"no project {project_id}")
            stray = sorted(set(clean) - set(c.execute(in_project).scalars()))
            if stray:
                raise StoreError(f"candidate {stray[0]} is not in project {project_id}; nothing was stored")
            c.execute(delete(candidate_scores).where(candidate_scores.c.candidate_id.in_(in_project)))
            if clean:
                c.execute(insert(candidate_scores), [
                    {"candidate_id": cid, "score": value, "reward_model": reward_model,
                     "weights_sha256": weights_sha256, "scored_at": now} for cid, value in clean.items()])
        return len(clean)

    def scores(self, project_id: int) -> dict[int, CandidateScore]:
        """candidate id -> its reward-model score, for every scored candidate of the project."""
        q = (select(candidate_scores).select_from(_scored_candidates()).where(items.c.project_id == project_id)
             .order_by(candidate_scores.c.candidate_id))
        with self.read() as c:
            return {int(r.candidate_id): CandidateScore(float(r.score), r.reward_model, r.weights_sha256,
                                                        float(r.scored_at)) for r in c.execute(q)}

    def uncertainty(self, project_id: int) -> dict[int, float]:
        """item id -> how sure the reward model is of the item's best answer: the score gap between its two
        best-scored candidates (0 when they tie). Only items whose candidates, two or more, all have a score;
        uncertain-first serving claims the smallest gap first and the items missing here after them."""
        gaps = _score_gaps(project_id)
        with self.read() as c:
            return {int(r.item_id): float(r.gap) for r in c.execute(select(gaps).order_by(gaps.c.item_id))}

    def score_summary(self, project_id: int) -> ScoreSummary | None:
        """How many candidates and items of the project have scores, and from which reward model(s); None
        when none has."""
        scored = (select(candidate_scores).select_from(_scored_candidates())
                  .where(items.c.project_id == project_id).subquery())
        with self.read() as c:
            n, latest = c.execute(select(func.count(), func.max(scored.c.scored_at))).one()
            if not n:
                return None
            models = tuple((r[0], r[1]) for r in c.execute(
                select(scored.c.reward_model, scored.c.weights_sha256).group_by(
                    scored.c.reward_model, scored.c.weights_sha256).order_by(func.max(scored.c.scored_at).desc())))
            n_items = c.execute(select(func.count()).select_from(_score_gaps(project_id))).scalar_one()
        return ScoreSummary(int(n), int(n_items), models, float(latest))

    # -------------------------------------------------------------------------------- lineage

    def rounds(self, project_id: int) -> list[Round]:
        """The project's rounds: one per model that wrote candidates (its weights hash when recorded, else its
        name), with its candidates, the current judgments of items holding one of them, and, when a
        ``lineage.json`` is found for its directory (:func:`read_lineage`) that names these weights, the store
        snapshots it was trained on. Round 1 is the model with no snapshot of this store (several: the oldest
        candidates first), then the others by the newest judgment id of their snapshot.

        A judgment of an item whose candidates came from two models counts for both: it compared them."""
        project = self.project(project_id)
        if project is None:
            raise StoreError(f"no project {project_id}")
        per_model = (select(candidates.c.item_id, candidates.c.model, candidates.c.model_path,
                            candidates.c.model_sha256, func.count(), func.min(candidates.c.id))
                     .select_from(candidates.join(items)).where(items.c.project_id == project_id)
                     .group_by(candidates.c.item_id, candidates.c.model, candidates.c.model_path,
                               candidates.c.model_sha256))
        per_item = (select(judgments.c.item_id, func.count(func.distinct(judgments.c.user_id)))
                    .select_from(judgments.join(items)).where(items.c.project_id == project_id)
                    .group_by(judgments.c.item_id))
        with self.read() as c:
            rows = c.execute(per_model).all()
            judged = {int(item_id): int(n) for item_id, n in c.execute(per_item)}
        # One model is one set of weights: the hash when it was recorded (two directories holding the same
        # weights are one model), else the name (imported candidates, candidates stored before schema 5).
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for item_id, model, path, sha, n, first in sorted(rows, key=lambda r: r[5]):
            g = groups.setdefault((sha, "") if sha else ("", model), {
                "model": model, "path": path, "sha": sha, "paths": [], "items": set(), "n": 0, "first": first})
            if path and path not in g["paths"]:
                g["paths"].append(path)
            g["items"].add(int(item_id))
            g["n"] += int(n)
            g["first"] = min(g["first"], first)
        here = public_url(self.url)
        found = []
        for g in groups.values():
            lineage, snapshots, note = "", (), ""
            for path in g["paths"]:
                where, data, note = read_lineage(path, g["sha"])
                if data is not None:
                    # An evaluation project is never trained on: the data of the models it compares lives in
                    # the store's other projects, so all of them are this store's rounds there.
                    lineage = str(where)
                    snapshots = _snapshots(data, here, None if project.is_head_to_head else project.name)
                    note = ""
                    break
            found.append(Round(0, g["model"], g["path"], g["sha"], g["n"], sum(judged.get(i, 0) for i in g["items"]),
                               int(g["first"]), snapshots, lineage, note))

        def order(r: Round) -> tuple[int, int, int]:
            ids = [s.latest_judgment_id for s in r.store_snapshots]
            if not ids:
                return 0, 0, r.first_candidate_id
            return 1, max((i for i in ids if i is not None), default=-1), r.first_candidate_id

        return [replace(r, number=n) for n, r in enumerate(sorted(found, key=order), start=1)]

    # -------------------------------------------------------------------------------- assignment

    def next_item(self, user: User, project: Project) -> int | None:
        """The annotator's oldest claimed-but-not-submitted item; when there is none, claim a new batch.

        Safe when one annotator calls it many times at once (two tabs, a repeated event): the claim
        re-checks for an open assignment inside its write transaction, so only one batch is claimed.
        An annotator's own expired claims stay theirs until another claim in the project releases them."""
        open_id = self._open_assignment(user.id, project.id)
        if open_id is not None:
            return open_id
        for _ in range(3):  # a concurrent claim by the same user in another tab can collide once
            try:
                self._claim(user.id, project)
                break
            except IntegrityError:
                continue
            except OperationalError as e:
                if not _lock_conflict(e):
                    raise
        return self._open_assignment(user.id, project.id)

    def _open_assignment(self, user_id: int, project_id: int, c: Connection | None = None) -> int | None:
        done = select(judgments.c.id).where(judgments.c.item_id == assignments.c.item_id,
                                            judgments.c.user_id == user_id).exists()
        q = (select(assignments.c.item_id).join(items).where(assignments.c.user_id == user_id,
                                                             items.c.project_id == project_id, ~done)
             .order_by(assignments.c.assigned_at, assignments.c.id).limit(1))
        if c is not None:  # inside the caller's transaction
            return c.execute(q).scalar()
        with self.read() as conn:
            return conn.execute(q).scalar()

    def _claim(self, user_id: int, project: Project) -> int:
        n_cands = select(func.count()).where(candidates.c.item_id == items.c.id).scalar_subquery()
        mine = select(assignments.c.id).where(assignments.c.item_id == items.c.id,
                                              assignments.c.user_id == user_id).exists()
        q = select(items.c.id).where(items.c.project_id == project.id, items.c.n_assigned < project.overlap,
                                     n_cands >= 2, ~mine)
        # The usual order: items others have started first (their overlap fills), then the oldest.
        order: list[Any] = [items.c.n_assigned.desc(), items.c.id]
        if project.uncertain_first:
            # Before it, the reward model's uncertainty: the smallest gap between an item's two best scores
            # first, items without scores after every scored one (an explicit flag: SQLite and PostgreSQL put
            # NULLs at opposite ends). The order only picks which free slots are tried first; taking one
            # is the same conditional UPDATE below, so the overlap holds as before.
            gaps = _score_gaps(project.id)
            q = q.select_from(items.outerjoin(gaps, gaps.c.item_id == items.c.id))
            order = [case((gaps.c.gap.is_(None), 1), else_=0), gaps.c.gap, *order]
        q = q.order_by(*order).limit(project.assign_batch * 4)
        claimed = 0
        now = self.clock()
        with self.write() as c:
            # One claim per annotator at a time: the user's row stays locked to the end of the transaction
            # (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers), and a claim that finds an
            # open assignment made meanwhile by a concurrent call of the same annotator claims nothing.
            c.execute(select(users.c.id).where(users.c.id == user_id).with_for_update())
            if self._open_assignment(user_id, project.id, c) is not None:
                return 0
            # Expired claims give their slots back first, in this transaction: the candidates below see them.
            cutoff = _cutoff(project, now)
            if cutoff is not None:
                self._release(c, project.id, "expired", now, assignments.c.assigned_at < cutoff)
            for item_id in c.execute(q).scalars().all():
                ok = c.execute(update(items).where(items.c.id == item_id, items.c.n_assigned < project.overlap)
                               .values(n_assigned=items.c.n_assigned + 1)).rowcount
                if ok:
                    c.execute(insert(assignments).values(item_id=item_id, user_id=user_id, assigned_at=now))
                    claimed += 1
                    if claimed >= project.assign_batch:
                        break
        return claimed

    def release_claims(self, project_id: int, *, user_id: int | None = None, item_id: int | None = None) -> int:
        """Release the open (claimed, unsubmitted) claims in a project of one annotator, of one item, or of
        that annotator on that item; returns how many. Submitted items stay with their annotators.

        One transaction: every released slot can be claimed again at once, and each is claimed once."""
        if user_id is None and item_id is None:
            raise StoreError("name an annotator or an item whose claims to release")
        scope = []
        if user_id is not None:
            scope.append(assignments.c.user_id == user_id)
        if item_id is not None:
            scope.append(assignments.c.item_id == item_id)
        with self.write() as c:
            return self._release(c, project_id, "released", self.clock(), *scope)

    @staticmethod
    def _release(c: Connection, project_id: int, reason: str, now: float, *where: Any) -> int:
        """Inside a write: delete the project's open assignments matching ``where``, give their slots back and
        remember each release for a late submission. Returns how many were released.

        The rows are locked first, in id order (concurrent releases and claims queue in one order instead
        of deadlocking), and each delete re-checks, in a statement of its own, that no judgment arrived
        meanwhile: on PostgreSQL a submission holding the row commits before the lock is granted, and only
        a new statement sees its judgment. A row already released by a concurrent transaction is gone
        when the lock is granted, so its slot is counted back once."""
        in_project = assignments.c.item_id.in_(select(items.c.id).where(items.c.project_id == project_id))
        rows = c.execute(select(assignments.c.id, assignments.c.item_id, assignments.c.user_id,
                                assignments.c.assigned_at)
                         .where(in_project, _unsubmitted(), *where).order_by(assignments.c.id)
                         .with_for_update()).all()
        released = 0
        for row in rows:
            if not c.execute(delete(assignments).where(assignments.c.id == row.id, _unsubmitted())).rowcount:
                continue
            c.execute(update(items).where(items.c.id == row.item_id).values(n_assigned=items.c.n_assigned - 1))
            c.execute(delete(released_claims).where(released_claims.c.item_id == row.item_id,
                                                    released_claims.c.user_id == row.user_id))
            c.execute(insert(released_claims).values(item_id=row.item_id, user_id=row.user_id,
                                                     assigned_at=row.assigned_at, released_at=now, reason=reason))
            released += 1
        return released

    def open_claims(self, project: Project) -> list[OpenClaims]:
        """Every annotator's open claims in the project (count, oldest, expired), by name."""
        cutoff = _cutoff(project, self.clock())
        expired = (func.sum(case((assignments.c.assigned_at < cutoff, 1), else_=0)) if cutoff is not None
                   else func.sum(0))
        q = (select(users.c.id, users.c.name, func.count(), func.min(assignments.c.assigned_at), expired)
             .select_from(assignments.join(users).join(items))
             .where(items.c.project_id == project.id, _unsubmitted())
             .group_by(users.c.id, users.c.name).order_by(users.c.name))
        with self.read() as c:
            return [OpenClaims(int(r[0]), r[1], int(r[2]), float(r[3]), int(r[4] or 0)) for r in c.execute(q)]

    def _judgment_assignment(self, c: Connection, user_id: int, item: Item) -> None:
        """Inside a submission's write: lock the annotator's assignment of the item; a released one is taken
        again when the item still has a free slot (a late submission), else refused with the reason.

        The lock queues one annotator's concurrent revisions of an item (PostgreSQL's FOR UPDATE; SQLite's
        BEGIN IMMEDIATE already serialises every writer) and orders a submission against a release."""
        mine = select(assignments.c.id).where(assignments.c.user_id == user_id,
                                              assignments.c.item_id == item.id).with_for_update()
        if c.execute(mine).first() is not None:
            return
        release = c.execute(select(released_claims.c.reason).where(
            released_claims.c.user_id == user_id, released_claims.c.item_id == item.id)).first()
        if release is None:
            raise StoreError("this item is not assigned to you")
        # Queue behind this annotator's claim in another tab (it holds the user row), which may be taking
        # this very item back; then look again.
        c.execute(select(users.c.id).where(users.c.id == user_id).with_for_update())
        if c.execute(mine).first() is not None:
            return
        overlap = select(projects.c.overlap).where(projects.c.id == item.project_id).scalar_subquery()
        if not c.execute(update(items).where(items.c.id == item.id, items.c.n_assigned < overlap)
                         .values(n_assigned=items.c.n_assigned + 1)).rowcount:
            why = ("your claim on this prompt expired" if release.reason == "expired"
                   else "an admin released your claim on this prompt")
            raise StoreError(f"{why} and other annotators have taken it since, so this judgment was not stored; "
                             "reload the page for your next prompt")
        c.execute(insert(assignments).values(item_id=item.id, user_id=user_id, assigned_at=self.clock()))
        c.execute(delete(released_claims).where(released_claims.c.user_id == user_id,
                                                released_claims.c.item_id == item.id))

    @staticmethod
    def _require_assignment(c: Connection, user_id: int, item_id: int) -> None:
        """Inside a write: only the annotators an item is assigned to may keep a draft of it (judgments:
        :meth:`_judgment_assignment`)."""
        q = select(assignments.c.id).where(assignments.c.user_id == user_id, assignments.c.item_id == item_id)
        if c.execute(q).first() is None:
            raise StoreError("this item is not assigned to you")

    def progress(self, user: User, project: Project) -> Progress:
        with self.read() as c:
            assigned = c.execute(select(func.count()).select_from(assignments.join(items)).where(
                assignments.c.user_id == user.id, items.c.project_id == project.id)).scalar_one()
            done = c.execute(select(func.count(func.distinct(judgments.c.item_id))).select_from(judgments.join(items))
                             .where(judgments.c.user_id == user.id, items.c.project_id == project.id)).scalar_one()
            n_cands = select(func.count()).where(candidates.c.item_id == items.c.id).scalar_subquery()
            mine = select(assignments.c.id).where(assignments.c.item_id == items.c.id,
                                                  assignments.c.user_id == user.id).exists()
            # Expired claims count as free: the claim that this annotator's next request makes releases them.
            taken = items.c.n_assigned
            cutoff = _cutoff(project, self.clock())
            if cutoff is not None:
                taken = taken - (select(func.count()).select_from(assignments)
                                 .where(assignments.c.item_id == items.c.id, assignments.c.assigned_at < cutoff,
                                        _unsubmitted()).scalar_subquery())
            available = c.execute(select(func.count()).select_from(items).where(
                items.c.project_id == project.id, taken < project.overlap, n_cands >= 2, ~mine)
            ).scalar_one()
        return Progress(int(done), int(assigned), int(available))

    # -------------------------------------------------------------------------------- judgments

    def submit(self, user: User, item_id: int, judgment: Judgment, submission_key: str) -> tuple[int, bool]:
        """Store a judgment; returns (judgment id, True) or, for a key already used, (that id, False)."""
        item = self.item(item_id)
        if item is None:
            raise StoreError("this item no longer exists")
        project = self.project(item.project_id)
        assert project is not None
        validate_judgment(judgment, item, project)
        if not submission_key or len(submission_key) > 64:
            raise StoreError("missing submission key")
        for _ in range(5):
            try:
                return self._insert_judgment(user, item, judgment, submission_key), True
            except IntegrityError:
                with self.read() as c:
                    row = c.execute(select(judgments.c.id, judgments.c.user_id).where(
                        judgments.c.submission_key == submission_key)).first()
                if row is not None:  # the same form submitted twice: stored once
                    if row.user_id != user.id:
                        raise StoreError("this submission could not be stored; reload the page") from None
                    return int(row.id), False
                # else a revision number was taken after all (the row lock should prevent it): retry
        raise StoreError("this submission could not be stored; please submit again")

    def _insert_judgment(self, user: User, item: Item, judgment: Judgment, submission_key: str) -> int:
        with self.write() as c:
            # Locked: two tabs revising the same item would otherwise both read the same latest revision.
            self._judgment_assignment(c, user.id, item)
            previous = c.execute(select(func.max(judgments.c.revision)).where(
                judgments.c.user_id == user.id, judgments.c.item_id == item.id)).scalar()
            version = c.execute(select(projects.c.guideline_version).where(
                projects.c.id == item.project_id)).scalar_one()
            jid = c.execute(insert(judgments).values(
                item_id=item.id, user_id=user.id, created_at=time.time(), payload=judgment.to_json(),
                guideline_version=version, revision=(previous or 0) + 1, submission_key=submission_key,
            )).inserted_primary_key[0]
            c.execute(drafts.delete().where(drafts.c.user_id == user.id, drafts.c.item_id == item.id))
        return int(jid)

    def revision_of(self, judgment_id: int) -> int:
        """The revision number of a stored judgment (1: the first submission of that annotator and item)."""
        with self.read() as c:
            return int(c.execute(select(judgments.c.revision).where(judgments.c.id == judgment_id)).scalar_one())

    def latest_judgment(self, user_id: int, item_id: int) -> StoredJudgment | None:
        q = (select(judgments, users.c.name).join(users).where(judgments.c.user_id == user_id,
                                                              judgments.c.item_id == item_id)
             .order_by(judgments.c.revision.desc()).limit(1))
        with self.read() as c:
            row = c.execute(q).first()
        return _judgment(row) if row else None

    def latest_judgments(self, project_id: int) -> list[StoredJudgment]:
        """The current judgment of every (annotator, item) in the project: the latest revision."""
        newest = (select(judgments.c.user_id, judgments.c.item_id, func.max(judgments.c.revision).label("rev"))
                  .group_by(judgments.c.user_id, judgments.c.item_id).subquery())
        q = (select(judgments, users.c.name).join(users).join(items)
             .join(newest, (newest.c.user_id == judgments.c.user_id) & (newest.c.item_id == judgments.c.item_id)
                   & (newest.c.rev == judgments.c.revision))
             .where(items.c.project_id == project_id).order_by(judgments.c.item_id, judgments.c.user_id))
        with self.read() as c:
            return [_judgment(r) for r in c.execute(q)]

    def recent_submissions(self, user_id: int, project_id: int, limit: int = 20) -> list[StoredJudgment]:
        """The annotator's latest judgment per item, newest first: what they may revise."""
        newest = (select(judgments.c.item_id, func.max(judgments.c.revision).label("rev"))
                  .where(judgments.c.user_id == user_id).group_by(judgments.c.item_id).subquery())
        q = (select(judgments, users.c.name).join(users).join(items)
             .join(newest, (newest.c.item_id == judgments.c.item_id) & (newest.c.rev == judgments.c.revision))
             .where(judgments.c.user_id == user_id, items.c.project_id == project_id)
             .order_by(judgments.c.created_at.desc()).limit(limit))
        with self.read() as c:
            return [_judgment(r) for r in c.execute(q)]

    def count_judgment_rows(self) -> int:
        with self.read() as c:
            return int(c.execute(select(func.count()).select_from(judgments)).scalar_one())

    # -------------------------------------------------------------------------------- drafts

    def save_draft(self, user_id: int, item_id: int, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, ensure_ascii=False)
        if len(text) > 8 * MAX_TEXT:
            raise StoreError("draft too large")
        with self.write() as c:
            self._require_assignment(c, user_id, item_id)
            n = c.execute(update(drafts).where(drafts.c.user_id == user_id, drafts.c.item_id == item_id)
                          .values(payload=text, updated_at=time.time())).rowcount
            if not n:
                c.execute(insert(drafts).values(user_id=user_id, item_id=item_id, payload=text, updated_at=time.time()))

    def draft(self, user_id: int, item_id: int) -> dict[str, Any] | None:
        with self.read() as c:
            text = c.execute(select(drafts.c.payload).where(drafts.c.user_id == user_id,
                                                            drafts.c.item_id == item_id)).scalar()
        return json.loads(text) if text else None

    # -------------------------------------------------------------------------------- jobs

    def create_job(self, project_id: int, kind: str, params: dict[str, Any], user_id: int, total: int) -> int:
        now = time.time()
        with self.write() as c:
            return int(c.execute(insert(jobs).values(
                project_id=project_id, kind=kind, params=json.dumps(params), status="queued", done=0, total=total,
                message="", created_by=user_id, created_at=now, updated_at=now)).inserted_primary_key[0])

    def update_job(self, job_id: int, **values: Any) -> None:
        values["updated_at"] = time.time()
        with self.write() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    def jobs(self, project_id: int | None = None, limit: int = 10) -> list[Job]:
        q = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if project_id is not None:
            q = q.where(jobs.c.project_id == project_id)
        with self.read() as c:
            return [Job(r.id, r.project_id, r.kind, json.loads(r.params), r.status, r.done, r.total, r.message,
                        r.created_at, r.updated_at) for r in c.execute(q)]

    def fail_interrupted_jobs(self) -> int:
        """Jobs left running by a server that died; called at start-up."""
        with self.write() as c:
            return c.execute(update(jobs).where(jobs.c.status.in_(("queued", "running"))).values(
                status="failed", message="interrupted: the server stopped", updated_at=time.time())).rowcount

    # -------------------------------------------------------------------------------- checks

    def integrity_problems(self) -> list[str]:
        """Database-level and feedback-level consistency checks; an empty list means all is well."""
        problems: list[str] = []
        with self.read() as c:
            if self.is_sqlite:
                result = [r[0] for r in c.exec_driver_sql("PRAGMA integrity_check")]
                if result != ["ok"]:
                    problems += [f"integrity_check: {r}" for r in result]
                problems += [f"foreign key: {tuple(r)}" for r in c.exec_driver_sql("PRAGMA foreign_key_check")]
            n_assign = select(assignments.c.item_id, func.count().label("n")).group_by(assignments.c.item_id).subquery()
            for item_id, n_assigned, n in c.execute(
                    select(items.c.id, items.c.n_assigned, func.coalesce(n_assign.c.n, 0))
                    .select_from(items.outerjoin(n_assign, n_assign.c.item_id == items.c.id))):
                if n_assigned != n:
                    problems.append(f"item {item_id}: n_assigned {n_assigned} but {n} assignments")
            orphan = c.execute(select(func.count()).select_from(judgments).where(~select(assignments.c.id).where(
                assignments.c.item_id == judgments.c.item_id, assignments.c.user_id == judgments.c.user_id).exists())
            ).scalar_one()
            if orphan:
                problems.append(f"{orphan} judgments without an assignment")
            for row in c.execute(select(judgments.c.id, judgments.c.payload)):
                try:
                    Judgment.from_json(row.payload)
                except (ValueError, TypeError, KeyError) as e:
                    problems.append(f"judgment {row.id}: unreadable payload ({e})")
        return problems


def validate_judgment(j: Judgment, item: Item, project: Project) -> None:
    """Refuse a judgment that does not fit the item; messages are shown to the annotator."""
    ids = {c.id for c in item.candidates}
    k = len(ids)
    if set(j.ranks) - ids or set(j.tags) - ids:
        raise StoreError("the judgment names a response that is not part of this item")
    if not j.all_unacceptable and set(j.ranks) != ids:
        missing = k - len(set(j.ranks) & ids)
        raise StoreError(f"rank every response ({missing} without a rank), or tick 'All unacceptable'")
    for rank in j.ranks.values():
        if not isinstance(rank, int) or not 1 <= rank <= k:
            raise StoreError(f"ranks go from 1 (best) to {k}")
    allowed = set(project.tags)
    for tags in j.tags.values():
        unknown = set(tags) - allowed
        if unknown:
            raise StoreError(f"unknown tag(s): {', '.join(sorted(unknown))}")
    if project.is_head_to_head and (j.correction.strip() or j.negative.strip() or j.correction_of is not None):
        raise StoreError("a head-to-head evaluation takes no corrected answer or negative example: it is never "
                         "exported for training, so they would be lost")
    if j.correction.strip() and j.correction_of not in ids:
        raise StoreError("choose which response your corrected answer replaces")
    for name in ("correction", "negative", "note"):
        if len(getattr(j, name)) > MAX_TEXT:
            raise StoreError(f"the {name} is longer than {MAX_TEXT} characters")


def display_order(user_id: int, item: Item) -> list[Candidate]:
    """The item's candidates shuffled for this annotator: stable across reloads, different per annotator."""
    order = list(item.candidates)
    random.Random(f"{user_id}:{item.id}").shuffle(order)
    return order


# ------------------------------------------------------------------------------------------------ lineage


def public_url(store: str) -> str:
    """A store (path or database URL, no ``#project``) fit for a file others read: a URL's password hidden."""
    if "://" not in store:
        return store
    from sqlalchemy.engine import make_url

    try:
        return make_url(store).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: say only its scheme
        return store.split("://", 1)[0] + "://..."


def read_lineage(model_path: str | Path, weights_sha256: str = "") -> tuple[Path | None, dict[str, Any] | None, str]:
    """The ``lineage.json`` of the model at ``model_path`` (in the directory, or in the phase folder above it),
    when it describes these weights: (its path, its content, ""). Otherwise (None, None, why): "" when there is
    none, else the reason the one found does not count (unreadable, or written for other weights: the folder
    was trained again after the candidates were generated). Without ``weights_sha256`` the directory must match.
    """
    model = Path(model_path)
    why = ""
    for folder in (model, model.parent):
        path = folder / LINEAGE_FILE
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            models = data["models"]
            hashes = {str(m["weights_sha256"]) for m in models}
            dirs = {str(m["path"]) for m in models}
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = f"{path} is unreadable ({type(e).__name__})"
            continue
        if (weights_sha256 in hashes) if weights_sha256 else (str(model) in dirs):
            return path, data, ""
        why = f"{path} is for other weights (the folder was trained again after these candidates)"
    return None, None, why


def _snapshots(lineage: dict[str, Any], here: str, project: str | None) -> tuple[Snapshot, ...]:
    """The snapshots a lineage.json names: the model's own data, then its reward model's (a PPO policy).
    ``this_store`` marks those of the store at ``here`` and of ``project`` (None: any of its projects)."""
    out = []

    def add(entries: Any, via: str) -> None:
        for e in entries if isinstance(entries, list) else []:
            if not isinstance(e, dict):
                continue
            store = str(e.get("store_url") or e.get("store") or "")
            # An export from before lineage names the store as it was given; only an absolute path compares.
            key = store if e.get("store_url") or "://" in store or not Path(store).is_absolute() \
                else public_url(database_url(store))
            out.append(Snapshot(store, e.get("project"), _int(e.get("latest_judgment_id")),
                                _int(e.get("judgments")) or 0, _int(e.get("pairs")) or 0,
                                _int(e.get("annotators")), str(e.get("exported_at") or ""),
                                key == here and (project is None or e.get("project") in (None, project)), via))

    add(lineage.get("snapshots"), "")
    reward_model = lineage.get("reward_model")
    if isinstance(reward_model, dict):
        add(reward_model.get("snapshots"), str(reward_model.get("path") or "reward model"))
    return tuple(out)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def lineage_rows(rounds: Sequence[Round]) -> list[list[Any]]:
    """The rounds as table rows under :data:`LINEAGE_HEADERS` (``align feedback lineage``, the dashboard)."""
    rows = []
    for r in rounds:
        model = r.model if not r.model_path or r.model == r.model_path else f"{r.model} ({r.model_path})"
        rows.append([r.number, model, r.weights_sha256[:12] or "-", r.candidates, r.judgments, trained_on_text(r)])
    return rows


def trained_on_text(r: Round) -> str:
    """What a round's model was trained on, in one cell: this store's snapshots, then other data."""
    if r.note:
        return f"unknown: {r.note}"
    if not r.lineage:
        return "-"
    parts = []
    for s in dict.fromkeys(r.store_snapshots):  # train and validation from one export: said once
        who = "? annotators" if s.annotators is None else f"{s.annotators} annotator{'s' if s.annotators != 1 else ''}"
        parts.append(f"{s.project or 'all projects'} up to judgment {s.latest_judgment_id or '?'} "
                     f"({s.judgments} judgments, {s.pairs} pairs, {who})"
                     + (f" via reward model {s.via}" if s.via else ""))
    others = list(dict.fromkeys(s.store + (f"#{s.project}" if s.project else "") for s in r.snapshots
                                if not s.this_store))
    if others:
        parts.append("other stores: " + ", ".join(others))
    return "; ".join(parts) or "no feedback store (trained on files)"


def format_rounds(rounds: Sequence[Round]) -> list[str]:
    """The rounds as an aligned text table, one line per round under a header line."""
    table = [list(LINEAGE_HEADERS), *[[str(v) for v in row] for row in lineage_rows(rounds)]]
    widths = [max(len(row[i]) for row in table) for i in range(len(LINEAGE_HEADERS) - 1)]
    return ["  ".join([*(v.ljust(w) for v, w in zip(row, widths)), row[-1]]).rstrip() for row in table]


# ------------------------------------------------------------------------------------------------ gold


def gold_agreement(gold: Sequence[int], ranks: Mapping[int, int]) -> float | None:
    """The share of candidate pairs a ranking orders as the gold ordering does (pairwise agreement).

    ``gold``: candidate ids, best first; ``ranks``: candidate id -> rank (1 = best, ties allowed). Every pair
    of candidates in both counts: 1 when the ranking puts the gold-better one first, 1/2 for a tie, 0 when
    reversed. Candidates missing from either side are left out; None when no pair is left."""
    ranked = [cid for cid in gold if cid in ranks]
    pairs = 0
    agree = 0.0
    for i, better in enumerate(ranked):
        for worse in ranked[i + 1:]:
            pairs += 1
            if ranks[better] < ranks[worse]:
                agree += 1.0
            elif ranks[better] == ranks[worse]:
                agree += 0.5
    return agree / pairs if pairs else None


def gold_accuracy(latest: Iterable[StoredJudgment], gold: Mapping[int, Sequence[int]]) -> dict[str, GoldScore]:
    """Per annotator (by name): their current judgments of gold items, and the mean :func:`gold_agreement`.

    ``latest``: the latest revision per annotator and item (:meth:`Store.latest_judgments`); ``gold``: item
    id -> gold ordering (:meth:`Store.gold`). Each gold item weighs the same, whatever its number of
    candidates. A judgment ticked "all unacceptable" is counted as judged but not scored: it gives no order
    to compare, as it gives no pairs in the export. Annotators without a gold judgment are not listed."""
    shares: dict[str, list[float]] = {}
    judged: Counter[str] = Counter()
    for sj in latest:
        if sj.item_id not in gold:
            continue
        judged[sj.user_name] += 1
        shares.setdefault(sj.user_name, [])
        if sj.judgment.all_unacceptable:
            continue
        share = gold_agreement(gold[sj.item_id], sj.judgment.ranks)
        if share is not None:
            shares[sj.user_name].append(share)
    return {name: GoldScore(judged[name], len(s), sum(s) / len(s) if s else None) for name, s in shares.items()}


def _gold_problem(ordering: list[Any], ids: Sequence[int]) -> str | None:
    """Why ``ordering`` (candidate ids) is not a gold ordering of an item with candidates ``ids``; None if it is."""
    if len(ids) < 2:
        return f"a gold ordering needs an item with 2 or more responses (this one has {len(ids)})"
    if any(isinstance(x, bool) or not isinstance(x, int) for x in ordering):
        return "a gold ordering is a list of candidate ids"
    if len(set(ordering)) != len(ordering):
        return "a gold ordering names each response once"
    if set(ordering) != set(ids):
        return f"a gold ordering names every response of the item once ({len(ids)}), best first"
    return None


def _gold_positions(value: Any, ids: Sequence[int], bad: Callable[..., StoreError]) -> list[int]:
    """A gold file's ``ordering`` (letters or 0-based indices of the item's stored candidates) as candidate ids."""
    k = len(ids)
    if k < 2:
        raise bad(f"the item has {k} response{'s' if k != 1 else ''}; a gold ordering needs 2 or more", "ordering")
    if not isinstance(value, list):
        raise bad("must be a list of the item's responses, best first (letters or 0-based indices), or null",
                  "ordering")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:k]
    out: list[int] = []
    for i, x in enumerate(value):
        if isinstance(x, str) and len(x.strip()) == 1 and x.strip().upper() in letters:
            pos = letters.index(x.strip().upper())
        elif isinstance(x, int) and not isinstance(x, bool) and 0 <= x < k:
            pos = x
        else:
            raise bad(f"{x!r} is not one of the item's {k} responses (letters {letters[0]}-{letters[-1]} or "
                      f"indices 0-{k - 1})", f"ordering[{i}]")
        if ids[pos] in out:
            raise bad(f"names response {letters[pos]} a second time", f"ordering[{i}]")
        out.append(ids[pos])
    if len(out) != k:
        missing = ", ".join(letters[j] for j in range(k) if ids[j] not in out)
        raise bad(f"names {len(out)} of the item's {k} responses (missing: {missing}); a gold ordering names "
                  "every response once, best first", "ordering")
    return out


def _gold_file_error(source: str, line: int, message: str, field_: str | None = None) -> StoreError:
    """A gold file problem, located as :class:`alignment.errors.AlignError` locates one (file:line, field)."""
    return StoreError(f"{source}:{line}" + (f", field '{field_}'" if field_ else "") + f": {message}")


# ------------------------------------------------------------------------------------------------ helpers


def _is_sha256(value: str) -> bool:
    """A SHA-256 as :func:`feedback_app.scoring.weights_sha256` writes it: 64 lowercase hex digits."""
    return len(value) == 64 and all(ch in "0123456789abcdef" for ch in value)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('begin', 'DEFERRED')}")


def _scored_candidates() -> Any:
    """candidate_scores joined to their candidates and items (to pick a project's scores)."""
    return candidate_scores.join(candidates, candidates.c.id == candidate_scores.c.candidate_id).join(
        items, items.c.id == candidates.c.item_id)


def _score_gaps(project_id: int) -> Any:
    """A subquery (item_id, gap): per item of the project whose candidates, two or more, all have a score, the
    best score minus the second best (0 for a tie at the top). Items with an unscored candidate are left out:
    the gap of the others says nothing about how the new answer compares."""
    ranked = (select(candidates.c.item_id.label("item_id"), candidate_scores.c.score.label("score"),
                     func.row_number().over(partition_by=candidates.c.item_id,
                                            order_by=(candidate_scores.c.score.desc(), candidates.c.id)).label("rn"))
              .select_from(candidates.outerjoin(candidate_scores,
                                                candidate_scores.c.candidate_id == candidates.c.id))
              .where(candidates.c.item_id.in_(select(items.c.id).where(items.c.project_id == project_id)))
              .subquery())
    gap = (func.max(case((ranked.c.rn == 1, ranked.c.score))) - func.max(case((ranked.c.rn == 2, ranked.c.score))))
    return (select(ranked.c.item_id, gap.label("gap")).group_by(ranked.c.item_id)
            .having(func.count(ranked.c.score) == func.count(), func.count() >= 2).subquery())


def _unsubmitted() -> Any:
    """An assignment row (of ``assignments``) whose annotator has not submitted the item: an open claim."""
    return ~select(judgments.c.id).where(judgments.c.item_id == assignments.c.item_id,
                                         judgments.c.user_id == assignments.c.user_id).exists()


def _cutoff(project: Project, now: float) -> float | None:
    """Claims made before this time have expired; None when the project's claims never expire."""
    return now - 60 * project.claim_ttl_minutes if project.claim_ttl_minutes > 0 else None


def _lock_conflict(e: OperationalError) -> bool:
    """PostgreSQL broke a lock cycle (deadlock) or a serialisation conflict by aborting this transaction: a
    retry may succeed. Claims lock items in the order they find them, so two claimers can cross."""
    return getattr(getattr(e, "orig", None), "sqlstate", None) in ("40P01", "40001")


def _refuse_head_to_head(c: Connection, task_query: Any) -> None:
    """Inside a write adding prompts or candidates: refuse a head-to-head evaluation (``task_query`` selects its
    task). Its items hold exactly its two models' answers, written when it is created; a third answer (the
    app's generation job fills items up to candidates_per_item) would no longer compare the two models."""
    if c.execute(task_query).scalar() == HEAD_TO_HEAD:
        raise StoreError("this is a head-to-head evaluation: its prompts and answers are set when it is created "
                         "(`align feedback h2h create`), not added to")


def _check_policies(policies_yaml: str, policies_name: str) -> None:
    """Refuse policies a report could not judge with: not text, too long, or not valid policies YAML (the
    AlignError of :func:`alignment.evaluation.rules.parse_rules`, naming ``policies_name``, line and field)."""
    if not isinstance(policies_yaml, str) or not isinstance(policies_name, str):
        raise StoreError("policies are YAML text and the name of the file they came from")
    if len(policies_yaml) > MAX_POLICIES_TEXT:
        raise StoreError(f"policies {policies_name}: {len(policies_yaml)} characters; a policies file is up to "
                         f"{MAX_POLICIES_TEXT}")
    if len(policies_name) > MAX_POLICIES_NAME:
        raise StoreError(f"a policies file name is up to {MAX_POLICIES_NAME} characters")
    if policies_yaml:
        # Imported here: only storing rules needs the rules' parser.
        from alignment.evaluation.rules import parse_rules

        parse_rules(policies_yaml, policies_name or "policies")


def _check_head_to_head(project: Project, baseline: str, challenger: str) -> None:
    """Refuse to add ``baseline`` vs ``challenger`` answers to ``project`` unless it is their evaluation."""
    if not project.is_head_to_head:
        raise StoreError(f"project '{project.name}' is a ranking project; choose another name for the head-to-head "
                         "evaluation")
    if (project.baseline, project.challenger) != (baseline, challenger):
        raise StoreError(f"project '{project.name}' compares '{project.challenger}' (challenger) with "
                         f"'{project.baseline}' (baseline), not '{challenger}' with '{baseline}'; choose another name")


def _user(row: Any) -> User:
    return User(row.id, row.name, row.role, row.session_epoch, bool(row.active))


def _candidate(row: Any) -> Candidate:
    return Candidate(row.id, row.text, row.model, json.loads(row.generation), row.model_path, row.model_sha256)


def _project(row: Any) -> Project:
    return Project(row.id, row.name, row.guidelines, row.guideline_version, tuple(json.loads(row.tags)),
                   row.candidates_per_item, row.overlap, row.assign_batch, row.claim_ttl_minutes,
                   bool(row.uncertain_first), row.task, row.baseline, row.challenger, row.policies_yaml,
                   row.policies_name)


def _judgment(row: Any) -> StoredJudgment:
    return StoredJudgment(row.id, row.item_id, row.user_id, row.name, row.created_at,
                          Judgment.from_json(row.payload), row.guideline_version, row.revision)
