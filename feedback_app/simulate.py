"""Simulated experts: annotators that judge a running feedback app through its real HTTP API.

Each simulated expert signs in through ``POST /login`` (the session cookie), then speaks Gradio's queue
protocol under a Gradio session hash of its own, exactly as the annotate page does: the ``load`` event
shows the first item, every ``submit`` event stores a judgment and shows the next one. The server keeps
the form's ``gr.State`` (which item, which candidate is in which slot, the submission key), so claims,
roles, overlap and the judgment's validation all apply as they do to a person. ``gradio_client`` is not
used: it starts by reading ``/gradio_api/info``, which the app serves to admins only.

The expert sees what a person sees: the prompt and the answers as rendered HTML, shuffled per annotator.
:func:`answer_from_html` turns an answer back into Markdown text and says whether that text renders to
exactly the HTML shown (true for plain answers and most Markdown; a corrected answer is written only then).

The oracle (:func:`judge`) is a pure function of the answers, the rules and a per-annotator seed:

- score = number of rules (``policies.yaml``) an answer follows (:func:`~alignment.evaluation.rules.check_answer`);
- answers with equal scores are ordered by a deterministic per-annotator draw (:func:`tie_key`), or, with a
  bias's probability, by the bias (``longer``, ``shorter``, ``first``: the answer shown first);
- noise: with probability ``noise`` two adjacent answers of the ranking are swapped;
- every answer that breaks a rule is tagged (the project's tag named like the rule, else ``policy
  violation``) when the project has such a tag;
- when no answer follows every rule, the best-ranked answer that a fixed string repairs (a required sign-off
  or disclaimer whose regex is a literal, :func:`repair`) is corrected; otherwise no correction.

Every random draw is seeded by (seed, annotator, item), never by the order in which threads run, so an
annotator judges an item the same way in every run; with ``threads=1`` the annotators take turns item by
item and the whole run (who judged what) is reproducible too.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.evaluation.rules import DomainRule, check_answer
from feedback_app.auth import COOKIE
from feedback_app.render import render_markdown
from feedback_app.store import MAX_TEXT, prompt_hash

if TYPE_CHECKING:
    import httpx

LETTERS = "ABCDEFGH"  # the page's response letters (feedback_app.annotate.LETTERS, which would import gradio)

# Bias name -> the sort key it puts on answers tied on rules: (display position, text) -> key, lower first.
BIASES: dict[str, Callable[[int, str], Any]] = {
    "longer": lambda pos, text: -len(text),
    "shorter": lambda pos, text: len(text),
    "first": lambda pos, text: pos,  # position bias: the answer shown first looks best
}
POLICY_TAG = "policy violation"  # one of the store's default tags


# ------------------------------------------------------------------------------------------------ the oracle


@dataclass(frozen=True)
class Expert:
    """How one simulated annotator judges: its account name (part of every seed), noise and biases."""

    name: str
    seed: int = 0
    noise: float = 0.0  # probability of swapping two adjacent answers of a ranking
    biases: tuple[tuple[str, float], ...] = ()  # (bias name, probability it orders a group of tied answers)

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise is a probability (0-1), not {self.noise}")
        for name, p in self.biases:
            if name not in BIASES:
                raise ValueError(f"unknown bias {name!r}; known: {', '.join(BIASES)}")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"bias {name} has probability {p}; give 0-1")
        if sum(p for _, p in self.biases) > 1.0 + 1e-9:
            raise ValueError(f"the biases of {self.name} add up to more than 1")


@dataclass(frozen=True)
class Decision:
    """The oracle's judgment of one item, per display slot (A, B, ...)."""

    order: tuple[int, ...]  # slots, best first (after noise)
    ranks: tuple[int, ...]  # rank per slot, 1 = best, no ties
    broken: tuple[tuple[str, ...], ...]  # per slot: names of the rules the answer breaks
    tags: tuple[tuple[str, ...], ...]  # per slot: problem tags to tick
    correction_of: int | None = None  # the slot the corrected answer replaces
    correction: str = ""
    swapped: int | None = None  # noise: position i and i+1 of the ranking were swapped
    biases_used: tuple[str | None, ...] = ()  # per group of tied answers: the bias that ordered it, or None
    unacceptable: bool = False  # "All unacceptable" ticked (a head-to-head "both bad")


def rule_scores(texts: Sequence[str], policies: Sequence[DomainRule]) -> list[int]:
    """How many rules each answer follows."""
    return [sum(check_answer(t, policies).values()) for t in texts]


def tie_key(seed: int, annotator: str, item_key: str, text: str) -> str:
    """This annotator's random draw for one answer of one item: a hash, so it depends on nothing else (not
    the display order, not which thread ran first)."""
    return hashlib.sha256(f"{seed}\0{annotator}\0{item_key}\0{text}".encode()).hexdigest()


def pick_bias(rng: random.Random, biases: Sequence[tuple[str, float]]) -> str | None:
    """The bias that orders one group of tied answers, or None (the random draw). One draw per call,
    whatever the outcome, so the draws of later groups do not depend on this one's."""
    u = rng.random()
    total = 0.0
    for name, p in biases:
        total += p
        if u < total:
            return name
    return None


def order_candidates(scores: Sequence[int], tie_keys: Sequence[str], texts: Sequence[str],
                     choose: Callable[[], str | None] = lambda: None) -> tuple[list[int], list[str | None]]:
    """Slots best first: higher score first; within a group of equal scores (2+ answers, taken from the best
    score down) ``choose()`` names a bias that orders it, or None for the tie keys. The tie key also
    breaks ties the bias leaves (two answers of the same length). Returns (order, bias per tied group)."""
    order: list[int] = []
    used: list[str | None] = []
    for score in sorted(set(scores), reverse=True):
        group = [i for i, s in enumerate(scores) if s == score]
        bias = choose() if len(group) > 1 else None
        if len(group) > 1:
            used.append(bias)
        if bias is None:
            group.sort(key=lambda i: tie_keys[i])
        else:
            group.sort(key=lambda i: (BIASES[bias](i, texts[i]), tie_keys[i]))
        order += group
    return order, used


def add_noise(order: Sequence[int], rng: random.Random, p: float) -> tuple[list[int], int | None]:
    """With probability ``p``, swap the answers at positions i and i+1 (i uniform); returns (order, i or None).
    Always one draw for the coin, so the same seed gives the same coin whatever ``p`` is."""
    out = list(order)
    coin = rng.random()
    if coin < p and len(out) > 1:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
        return out, i
    return out, None


def ranks_from_order(order: Sequence[int]) -> tuple[int, ...]:
    """Rank per slot (1 = best) from slots best first."""
    ranks = [0] * len(order)
    for position, slot in enumerate(order):
        ranks[slot] = position + 1
    return tuple(ranks)


def problem_tags(broken: Sequence[str], choices: Sequence[str]) -> tuple[str, ...]:
    """The project's tags for the broken rules: a tag named like the rule (any case), else ``policy
    violation`` when the project has it; nothing when it has neither (the server refuses unknown tags)."""
    by_lower = {c.lower(): c for c in choices}
    out: list[str] = []
    for rule in broken:
        tag = by_lower.get(rule.lower()) or by_lower.get(POLICY_TAG)
        if tag and tag not in out:
            out.append(tag)
    return tuple(out)


# A regex the oracle can satisfy with a fixed string: optional inline flags, optional anchors, literal
# characters and escaped punctuation, whitespace classes, word boundaries. Anything else (classes,
# alternation, groups, repeats of literals) is not a fixed string: no repair.
_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")


def fixed_text(pattern: str) -> tuple[str, str] | None:
    """(literal, where) when ``pattern`` is found by inserting one fixed string, else None. ``where``: "start"
    (``\\A``, or ``^`` without multiline: a first paragraph), "end" (``\\Z``, or ``$`` without multiline: a
    last paragraph) or "anywhere" (a paragraph of its own; ``(?m)^`` and ``(?m)$`` hold there too)."""
    rest = pattern
    multiline = False
    while (m := _FLAGS.match(rest)):
        multiline |= "m" in m.group(0)
        rest = rest[m.end():]
    start = end = False
    if rest.startswith("\\A"):
        start, rest = True, rest[2:]
    elif rest.startswith("^"):
        start, rest = not multiline, rest[1:]
    out: list[str] = []
    i = 0
    while i < len(rest):
        ch = rest[i]
        if ch == "\\" and i + 1 < len(rest):
            nxt = rest[i + 1]
            quant = rest[i + 2] if i + 2 < len(rest) and rest[i + 2] in "*+?" else ""
            if nxt == "s":  # whitespace: nothing for \s* and \s?, one space for \s and \s+
                out.append(" " if quant in ("", "+") else "")
                i += 2 + len(quant)
            elif nxt == "b":  # a word boundary holds or not by itself; the final check of repair() tells
                i += 2
            elif nxt == "Z" and i + 2 == len(rest):
                end = True
                i += 2
            elif nxt.isalnum() or quant:  # \d, \w, \n, backreferences, a repeated literal: no fixed string
                return None
            else:  # escaped punctuation is itself
                out.append(nxt)
                i += 2
        elif ch == "$" and i + 1 == len(rest):
            end = not multiline
            i += 1
        elif ch in ".^$*+?{}[]()|" or (i + 1 < len(rest) and rest[i + 1] in "*+?{"):
            return None  # a metacharacter, or a literal with a quantifier
        else:
            out.append(ch)
            i += 1
    literal = "".join(out).strip()
    if not literal or (start and end):
        return None  # nothing to insert, or the whole answer would have to be the literal
    return literal, "start" if start else "end" if end else "anywhere"


def repair(text: str, policies: Sequence[DomainRule]) -> str | None:
    """``text`` made to follow every rule by inserting required fixed strings as paragraphs of their own, or
    None when that is not possible: a forbidden pattern is found, a required pattern is no fixed string, or
    the result still breaks a rule. The final check is the policies themselves, so a repair is never
    assumed to work. An "anywhere" string goes after the text, else before its last paragraph (where a
    sign-off the answer already has must stay last)."""
    verdicts = check_answer(text, policies)
    if all(verdicts.values()):
        return None
    body = text.strip()
    parts: dict[str, list[str]] = {"start": [], "anywhere": [], "end": []}
    for policy in policies:
        if verdicts[policy.name]:
            continue
        if any(p.search(text) for p in policy.must_not_match):
            return None
        for pattern in policy.must_match:
            if pattern.search(body):
                continue
            found = fixed_text(pattern.pattern)
            if found is None:
                return None
            parts[found[1]].append(found[0])
    tries = [[*parts["start"], body, *parts["anywhere"], *parts["end"]]]
    head, sep, last = body.rpartition("\n\n")
    if parts["anywhere"] and sep:
        tries.append([*parts["start"], head, *parts["anywhere"], last, *parts["end"]])
    for paragraphs in tries:
        fixed = "\n\n".join(paragraphs)
        if all(check_answer(fixed, policies).values()) and len(fixed) <= MAX_TEXT:
            return fixed
    return None


def judge(texts: Sequence[str], policies: Sequence[DomainRule], expert: Expert, item_key: str, *,
          tag_choices: Sequence[str] = (), exact: Sequence[bool] | None = None,
          head_to_head: bool = False) -> Decision:
    """The expert's judgment of the answers ``texts`` (display order) of the item ``item_key``.

    ``tag_choices``: the project's problem tags; ``exact``: per answer, whether its text is exactly what was
    shown (a correction is only written from such a text; default: all). ``head_to_head``: see
    :func:`judge_head_to_head`."""
    if head_to_head:
        return judge_head_to_head(texts, policies, expert, item_key, tag_choices=tag_choices)
    verdicts = [check_answer(t, policies) for t in texts]
    scores = [sum(v.values()) for v in verdicts]
    keys = [tie_key(expert.seed, expert.name, item_key, t) for t in texts]
    bias_rng = random.Random(f"{expert.seed}:{expert.name}:{item_key}:bias")
    order, used = order_candidates(scores, keys, texts, lambda: pick_bias(bias_rng, expert.biases))
    noise_rng = random.Random(f"{expert.seed}:{expert.name}:{item_key}:noise")
    order, swapped = add_noise(order, noise_rng, expert.noise)
    broken = tuple(tuple(name for name, ok in v.items() if not ok) for v in verdicts)
    tags = tuple(problem_tags(b, tag_choices) for b in broken)
    correction_of, correction = None, ""
    if texts and all(broken):  # no answer follows every rule: the expert writes one that does, if it can
        exact = [True] * len(texts) if exact is None else list(exact)
        for slot in order:
            fixed = repair(texts[slot], policies) if exact[slot] else None
            if fixed is not None:
                correction_of, correction = slot, fixed
                break
    return Decision(tuple(order), ranks_from_order(order), broken, tags, correction_of, correction, swapped,
                    tuple(used))


def judge_head_to_head(texts: Sequence[str], policies: Sequence[DomainRule], expert: Expert, item_key: str, *,
                       tag_choices: Sequence[str] = ()) -> Decision:
    """The expert's vote on a head-to-head item (two answers, display order): the answer that follows more
    rules is better, and with probability ``expert.noise`` the other one is picked instead; equal counts are a
    tie when both follow every rule and "both bad" (all unacceptable) otherwise, without noise. No correction:
    an evaluation is not training data."""
    if len(texts) != 2:
        raise ValueError(f"a head-to-head item shows two answers, not {len(texts)}")
    verdicts = [check_answer(t, policies) for t in texts]
    scores = [sum(v.values()) for v in verdicts]
    broken = tuple(tuple(name for name, ok in v.items() if not ok) for v in verdicts)
    tags = tuple(problem_tags(b, tag_choices) for b in broken)
    noise_rng = random.Random(f"{expert.seed}:{expert.name}:{item_key}:noise")
    if scores[0] == scores[1]:
        noise_rng.random()  # the same draws whatever the answers, as in judge()
        return Decision((0, 1), (1, 1), broken, tags, unacceptable=any(broken))
    order, swapped = add_noise([0, 1] if scores[0] > scores[1] else [1, 0], noise_rng, expert.noise)
    return Decision(tuple(order), ranks_from_order(order), broken, tags, swapped=swapped)


# ------------------------------------------------------------------------------------------------ what the page shows


class _PromptParser(HTMLParser):
    """Messages of ``render_prompt``: ``<div class="role">`` and ``<div class="msg">`` pairs, escaped text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.messages: list[dict[str, str]] = []
        self.field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        cls = dict(attrs).get("class")
        if tag == "div" and cls in ("role", "msg"):
            self.field = "role" if cls == "role" else "content"
            if cls == "role":
                self.messages.append({"role": "", "content": ""})

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self.field = None

    def handle_data(self, data: str) -> None:
        if self.field and self.messages:
            self.messages[-1][self.field] += data


def prompt_from_html(prompt_html: str) -> list[dict[str, str]]:
    """The conversation the page shows (``render_prompt`` escapes it as plain text, so this is exact)."""
    parser = _PromptParser()
    parser.feed(prompt_html)
    parser.close()
    return parser.messages


class _MarkdownText(HTMLParser):
    """Markdown source for markdown-it's HTML: paragraphs, breaks, headings, lists, code, emphasis, links.
    Other elements give their text only; :func:`answer_from_html` checks whether the result is exact."""

    INLINE = {"strong": "**", "em": "*", "s": "~~", "del": "~~"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.lists: list[list[Any]] = []  # open lists: [tag, next number]
        self.pre = False
        self.text_depth = 0  # inside an element whose whitespace is text (p, h*, li, pre, td, th)
        self.links: list[str] = []

    def _text(self) -> str:
        return "".join(self.parts)

    def _newlines(self, n: int) -> None:
        text = self._text()
        if text and not text.endswith("- ") and not re.search(r"\d+\. $", text):
            have = len(text) - len(text.rstrip("\n"))
            self.parts.append("\n" * max(0, n - have))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("p", "pre", "blockquote", "table", "hr") or re.fullmatch(r"h[1-6]", tag):
            self._newlines(2)
        if re.fullmatch(r"h[1-6]", tag):
            self.parts.append("#" * int(tag[1]) + " ")
        if tag in ("p", "li", "td", "th", "pre") or re.fullmatch(r"h[1-6]", tag):
            self.text_depth += 1
        if tag in ("ul", "ol"):
            self._newlines(1 if self.lists else 2)
            self.lists.append([tag, int(a.get("start") or 1)])
        elif tag == "li" and self.lists:
            self._newlines(1)
            kind = self.lists[-1]
            indent = "  " * (len(self.lists) - 1)
            marker = "- " if kind[0] == "ul" else f"{kind[1]}. "
            kind[1] += 1
            self.parts.append(indent + marker)
        elif tag == "pre":
            self.pre = True
            self.parts.append("```")
        elif tag == "code":
            if self.pre:
                lang = (a.get("class") or "").removeprefix("language-")
                self.parts.append(lang + "\n")
            else:
                self.parts.append("`")
        elif tag in self.INLINE:
            self.parts.append(self.INLINE[tag])
        elif tag == "a":
            self.links.append(a.get("href") or "")
            self.parts.append("[")
        elif tag == "br":
            self.parts.append("  ")  # a hard break: the "\n" after <br /> follows as text
        elif tag == "hr":
            self.parts.append("---")
        elif tag in ("td", "th") and self._text() and not self._text().endswith("\n"):
            self.parts.append(" | ")  # cells of a row on one line

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "li", "td", "th", "pre") or re.fullmatch(r"h[1-6]", tag):
            self.text_depth = max(0, self.text_depth - 1)
        if tag in ("ul", "ol") and self.lists:
            self.lists.pop()
        elif tag == "pre":
            self.pre = False
            self.parts.append("```")
        elif tag == "code" and not self.pre:
            self.parts.append("`")
        elif tag in self.INLINE:
            self.parts.append(self.INLINE[tag])
        elif tag == "a":
            self.parts.append(f"]({self.links.pop() if self.links else ''})")
        elif tag == "tr":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not data.strip() and not self.text_depth and not self.pre:
            return  # the newlines markdown-it writes between blocks
        self.parts.append(data)


_RESPONSE = re.compile(r'\A<div class="resp-title">Response [A-H]</div><div class="msg md answer">(.*)</div>\Z',
                       re.DOTALL)


def answer_from_html(response_html: str) -> tuple[str, bool]:
    """(Markdown text, exact) of one answer as the page shows it (``render_response``). ``exact``: the text
    renders to exactly the HTML shown, so it can stand for the answer in a correction."""
    m = _RESPONSE.match(response_html)
    inner = m.group(1) if m else response_html
    parser = _MarkdownText()
    parser.feed(inner)
    parser.close()
    text = parser._text().strip("\n")
    return text, bool(m) and render_markdown(text) == inner


# ------------------------------------------------------------------------------------------------ the app's HTTP API


class AppError(RuntimeError):
    """The app refused a request or answered in an unexpected way."""


def app_login(client: httpx.Client, name: str, password: str) -> str:
    """Sign in through the login form; returns the session cookie, which ``client`` now sends."""
    r = client.post("/login", data={"username": name, "password": password}, follow_redirects=False)
    if r.status_code != 303 or not r.cookies.get(COOKIE):
        why = {401: "wrong user name or password", 429: "too many failed attempts"}.get(r.status_code, "")
        raise AppError(f"login of {name} failed: HTTP {r.status_code} {why}".rstrip())
    client.cookies.set(COOKIE, r.cookies[COOKIE])
    return r.cookies[COOKIE]


def queue_call(client: httpx.Client, session_hash: str, fn_index: int, data: list[Any], what: str) -> list[Any]:
    """Run one Gradio event to completion through the queue, as the page does (``queue/join``, then the
    ``queue/data`` stream of this session until the event completes); returns its output list. The session
    hash keeps the server-side state (``gr.State``) between events. Raises :class:`AppError` naming ``what``."""
    r = client.post("/gradio_api/queue/join", json={
        "data": data, "fn_index": fn_index, "trigger_id": None, "session_hash": session_hash, "event_data": None})
    if r.status_code != 200:
        raise AppError(f"{what}: queue/join HTTP {r.status_code}: {r.text[:200]}")
    event_id = r.json()["event_id"]
    done: dict[str, Any] | None = None
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as s:
        if s.status_code != 200:
            raise AppError(f"{what}: queue/data HTTP {s.status_code}")
        for line in s.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            kind = msg.get("msg")
            if kind == "process_completed" and msg.get("event_id") == event_id:
                done = msg
                break
            if kind == "unexpected_error":
                raise AppError(f"{what}: {msg.get('message')}")
            if kind in ("close_stream", "server_stopped"):
                break
    if done is None:
        raise AppError(f"{what}: the event stream ended without a result")
    if not done.get("success", False):
        out = done.get("output") or {}
        raise AppError(f"{what}: {out.get('error') or str(out)[:300]}")
    return done["output"]["data"]


@dataclass(frozen=True)
class Api:
    """Event ids and component positions of the annotate page, read from the app's ``/config``."""

    fn: dict[str, int]  # api_name -> event id (load, submit, select_project)
    inputs: dict[str, tuple[str, ...]]  # api_name -> input component names, in the order the server expects
    outputs: dict[str, dict[str, int]]  # api_name -> component name -> position in the output list

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Api:
        comps = {c["id"]: c for c in config["components"]}

        def name(cid: int) -> str:  # elem_id where the app gives one; the gr.State has none
            c = comps[cid]
            return c.get("props", {}).get("elem_id") or c["type"]

        deps = {d.get("api_name"): d for d in config["dependencies"]}
        missing = [n for n in ("load", "submit") if n not in deps]
        if missing:
            raise AppError(f"the app has no {' or '.join(missing)} event: is this the feedback app?")
        wanted = [n for n in ("load", "submit", "select_project") if n in deps]
        return cls(fn={n: deps[n]["id"] for n in wanted},
                   inputs={n: tuple(name(i) for i in deps[n]["inputs"]) for n in wanted},
                   outputs={n: {name(i): k for k, i in enumerate(deps[n]["outputs"])} for n in wanted})


@dataclass(frozen=True)
class View:
    """What an event put on the annotate page; None where it left that part unchanged."""

    prompt_html: str | None = None
    responses: tuple[str, ...] | None = None  # HTML of the visible answers, slot A first
    tag_choices: tuple[str, ...] | None = None
    message: str | None = None
    project: str | None = None
    projects: tuple[str, ...] | None = None

    @property
    def has_item(self) -> bool:
        return bool(self.prompt_html) and bool(self.responses)


def _choices(update: Any) -> list[str] | None:
    if not isinstance(update, dict) or "choices" not in update:
        return None
    return [c[1] if isinstance(c, (list, tuple)) else c for c in update["choices"]]


def parse_view(data: Sequence[Any], outputs: Mapping[str, int]) -> View:
    """A :class:`View` from an event's output list (component updates without a value are "unchanged")."""

    def value(key: str) -> Any:
        if key not in outputs:
            return None
        v = data[outputs[key]]
        if isinstance(v, dict) and v.get("__type__") == "update":
            return v.get("value")
        return v

    prompt = value("prompt")
    ranks = [_choices(data[outputs[f"rank-{i}"]]) for i in range(len(LETTERS)) if f"rank-{i}" in outputs]
    responses = None
    if ranks and ranks[0] is not None:  # the rank controls were updated: the visible slots have choices
        k = sum(1 for r in ranks if r)
        responses = tuple(str(value(f"response-{i}") or "") for i in range(k))
    tags = _choices(data[outputs["tags-0"]]) if "tags-0" in outputs else None
    project = data[outputs["project"]] if "project" in outputs else None
    projects = _choices(project)
    message = value("message")
    return View(prompt if isinstance(prompt, str) else None, responses, tuple(tags) if tags is not None else None,
                message if isinstance(message, str) else None,
                project.get("value") if isinstance(project, dict) else None,
                tuple(projects) if projects is not None else None)


def merge_view(old: View, new: View) -> View:
    """The page after ``new``: its parts where it set them, ``old``'s elsewhere."""
    return View(*(n if n is not None else o for o, n in zip(asdict(old).values(), asdict(new).values())))


class AppSession:
    """One annotator in one browser tab: the session cookie and a Gradio session hash, events one at a time."""

    def __init__(self, url: str, name: str, password: str, *, timeout: float = 120.0) -> None:
        import httpx

        self.name = name
        self._password = password
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.session_hash = secrets.token_hex(8)
        self.api: Api | None = None

    def close(self) -> None:
        self.client.close()

    def login(self) -> None:
        app_login(self.client, self.name, self._password)
        r = self.client.get("/config")
        if r.status_code != 200:
            raise AppError(f"/config: HTTP {r.status_code}")
        self.api = Api.from_config(r.json())

    def call(self, api_name: str, data: list[Any]) -> list[Any]:
        """Run one event to completion through the queue (as the page does); returns its output list."""
        assert self.api is not None, "login first"
        return queue_call(self.client, self.session_hash, self.api.fn[api_name], data, api_name)

    def event(self, api_name: str, values: Mapping[str, Any]) -> View:
        """Call ``api_name`` with inputs by component name (the gr.State: None, the server keeps it)."""
        assert self.api is not None, "login first"
        data = [values.get(key) for key in self.api.inputs[api_name]]
        return parse_view(self.call(api_name, data), self.api.outputs[api_name])

    def load(self) -> View:
        return self.event("load", {})

    def select_project(self, name: str) -> View:
        if self.api is None or "select_project" not in self.api.fn:
            raise AppError("the app has no select_project event")
        return self.event("select_project", {"project": name})

    def submit(self, k: int, decision: Decision) -> View:
        values: dict[str, Any] = {"unacceptable": decision.unacceptable, "negative": "", "note": "",
                                  "correction": decision.correction,
                                  "correction-of": LETTERS[decision.correction_of]
                                  if decision.correction_of is not None else None}
        for i in range(len(LETTERS)):
            values[f"rank-{i}"] = str(decision.ranks[i]) if i < k else None
            values[f"tags-{i}"] = list(decision.tags[i]) if i < k else []
        return self.event("submit", values)


# ------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class Submission:
    """One acknowledged judgment: who, the item as shown, what was sent."""

    annotator: str
    prompt: list[dict[str, str]]
    item_key: str  # prompt_hash of the prompt: the store's own key of an item within its project
    texts: tuple[str, ...]  # the answers as read from the page, in display order
    ranks: tuple[int, ...]  # per display slot
    tags: tuple[tuple[str, ...], ...]
    correction_of: int | None  # display slot
    correction: str
    swapped: int | None
    message: str


@dataclass
class RunResult:
    submissions: list[Submission] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)  # annotator -> why it stopped
    wall: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, sub: Submission) -> None:
        with self._lock:
            self.submissions.append(sub)

    def error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def per_annotator(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.submissions:
            out[s.annotator] = out.get(s.annotator, 0) + 1
        return out


class SimulatedAnnotator:
    """One expert's session; :meth:`step` judges one item. Stops at the end of the work, at ``max_items``,
    or after repeated failures (recorded in the result)."""

    MAX_FAILURES = 3  # consecutive transport failures before giving up

    def __init__(self, url: str, expert: Expert, password: str, policies: Sequence[DomainRule], result: RunResult, *,
                 project: str | None = None, max_items: int | None = None, timeout: float = 120.0,
                 head_to_head: bool = False) -> None:
        self.expert = expert
        self.head_to_head = head_to_head
        self.policies = list(policies)
        self.result = result
        self.project = project
        self.max_items = max_items
        self.session = AppSession(url, expert.name, password, timeout=timeout)
        self.view = View()
        self.done = 0
        self.failures = 0
        self.active = True

    def _stop(self, why: str, error: bool = False) -> None:
        self.active = False
        self.result.finished[self.expert.name] = why
        if error:
            self.result.error(f"{self.expert.name}: {why}")
        self.session.close()

    def _show(self) -> None:
        """Load the page (and pick the project), as a browser tab does on (re)load."""
        self.view = self.session.load()
        if self.project is not None and self.view.project != self.project:
            if self.project not in (self.view.projects or ()):
                raise AppError(f"no project {self.project!r} (projects: {', '.join(self.view.projects or ())})")
            self.view = merge_view(self.view, self.session.select_project(self.project))

    def start(self) -> None:
        try:
            self.session.login()
            self._show()
        except Exception as e:  # the annotator ends; the error is the record
            self._stop(f"could not start: {type(e).__name__}: {e}", error=True)

    def step(self) -> bool:
        """Judge the item shown and submit; False once this annotator has stopped."""
        if not self.active:
            return False
        try:
            return self._step()
        except Exception as e:  # an unforeseen answer ends this annotator, not the whole run
            self._stop(f"{type(e).__name__}: {e}", error=True)
            return False

    def _step(self) -> bool:
        if self.max_items is not None and self.done >= self.max_items:
            self._stop(f"max items ({self.max_items})")
            return False
        view = self.view
        if not view.has_item:
            self._stop(f"no work left: {view.message or ''}".strip())
            return False
        assert view.prompt_html is not None and view.responses is not None
        prompt = prompt_from_html(view.prompt_html)
        item_key = prompt_hash(prompt)
        read = [answer_from_html(h) for h in view.responses]
        texts = [t for t, _ in read]
        decision = judge(texts, self.policies, self.expert, item_key, tag_choices=view.tag_choices or (),
                         exact=[e for _, e in read], head_to_head=self.head_to_head)
        try:
            after = self.session.submit(len(texts), decision)
        except Exception as e:
            # The submit may or may not have been stored. Never resend it: the server's form may show the
            # next item by now. Reload instead: the oldest unsubmitted claim comes back, judged the same way.
            self.failures += 1
            if self.failures > self.MAX_FAILURES:
                self._stop(f"{self.failures} failures in a row, last: {type(e).__name__}: {e}", error=True)
                return False
            time.sleep(0.5 * self.failures)
            try:
                self._show()
            except Exception as e2:
                self._stop(f"reload failed: {type(e2).__name__}: {e2}", error=True)
                return False
            return True
        message = after.message or ""
        if message.startswith(("Saved", "Already saved")):
            self.failures = 0
            self.done += 1
            self.result.add(Submission(self.expert.name, prompt, item_key, tuple(texts), decision.ranks,
                                       decision.tags, decision.correction_of, decision.correction, decision.swapped,
                                       message))
            self.view = merge_view(View(), after)  # the next form (or none), as the page shows it
            return True
        if message.startswith("The page was out of date"):  # the server restarted: its form comes back
            self.failures += 1
            self.view = merge_view(self.view, after)
            if self.failures > self.MAX_FAILURES:
                self._stop(message, error=True)
                return False
            return True
        self._stop(f"submit refused: {message or 'no message'}", error=True)
        return False


def parse_bias(spec: str) -> tuple[str | None, str, float]:
    """``[ANNOTATOR:]NAME=PROB`` -> (annotator or None for everyone, bias name, probability)."""
    head, sep, prob = spec.partition("=")
    who, colon, name = head.rpartition(":")
    try:
        p = float(prob)
    except ValueError:
        p = -1.0
    if not sep or not name or name not in BIASES or not 0.0 <= p <= 1.0:
        raise ValueError(f"--bias takes [ANNOTATOR:]NAME=PROB with NAME one of {', '.join(BIASES)} and PROB in "
                         f"0-1, not {spec!r}")
    return (who if colon else None), name, p


def make_experts(names: Sequence[str], *, seed: int = 0, noise: float = 0.0,
                 biases: Sequence[tuple[str | None, str, float]] = ()) -> list[Expert]:
    """One :class:`Expert` per annotator; a bias without an annotator applies to every one."""
    unknown = sorted({who for who, _, _ in biases if who is not None} - set(names))
    if unknown:
        raise ValueError(f"--bias names annotators not in the run: {', '.join(unknown)}")
    out = []
    for name in names:
        mine: dict[str, float] = {}
        for who, bias, p in biases:
            if who is None or who == name:
                mine[bias] = p  # a per-annotator setting overrides one for everyone given before it
        out.append(Expert(name, seed=seed, noise=noise, biases=tuple(mine.items())))
    return out


def simulate(url: str, accounts: Sequence[tuple[str, str]], policies: Sequence[DomainRule], *, seed: int = 0,
             noise: float = 0.0, biases: Sequence[tuple[str | None, str, float]] = (), project: str | None = None,
             max_items: int | None = None, threads: int = 0, timeout: float = 120.0,
             head_to_head: bool = False) -> RunResult:
    """Run one simulated expert per (name, password) against the app at ``url`` until no work is left.

    ``head_to_head``: the project is a head-to-head evaluation (:func:`judge_head_to_head` votes).
    ``threads``: 1 runs the annotators in turns, one item each, in one thread (a reproducible run); 0 (the
    default) one thread per annotator; n, at most n annotators at once. ``max_items``: per annotator."""
    experts = make_experts([name for name, _ in accounts], seed=seed, noise=noise, biases=biases)
    result = RunResult()
    t0 = time.perf_counter()
    annotators = [SimulatedAnnotator(url, e, pw, policies, result, project=project, max_items=max_items,
                                     timeout=timeout, head_to_head=head_to_head)
                  for e, (_, pw) in zip(experts, accounts)]
    if threads == 1:
        for a in annotators:
            a.start()
        while any([a.step() for a in annotators]):  # a list: every annotator steps in each turn
            pass
    else:
        def run(a: SimulatedAnnotator) -> None:
            a.start()
            while a.step():
                pass

        with ThreadPoolExecutor(max_workers=threads or len(annotators) or 1) as pool:
            list(pool.map(run, annotators))
    result.wall = time.perf_counter() - t0
    return result


def write_submissions(result: RunResult, path: str | Path) -> Path:
    """Every acknowledged submission as one JSON object per line (answers by display letter)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for s in result.submissions:
            f.write(json.dumps({
                "annotator": s.annotator, "prompt": s.prompt, "item_key": s.item_key,
                "ranks": {LETTERS[i]: r for i, r in enumerate(s.ranks)},
                "tags": {LETTERS[i]: list(t) for i, t in enumerate(s.tags) if t},
                "correction_of": LETTERS[s.correction_of] if s.correction_of is not None else None,
                "correction": s.correction, "noise_swap": s.swapped, "message": s.message,
                "answers": {LETTERS[i]: t for i, t in enumerate(s.texts)},
            }, ensure_ascii=False) + "\n")
    return path
