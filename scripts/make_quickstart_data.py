"""Generate the quickstart's sample domain data: the support desk of "Harborline Insurance" (fictional).

    python scripts/make_quickstart_data.py              # rewrites recipes/quickstart/data/
    python scripts/make_quickstart_data.py --out DIR    # writes the same bytes elsewhere (tests use this)

Writes four JSONL files:
  sft.jsonl               chat conversations (system, user, assistant [, user, assistant])
  preferences.jsonl       prompt / chosen / rejected, plus `violates`: the policies the rejected side breaks
  heldout_prompts.jsonl   evaluation prompts whose user text never appears in the two training files
  ppo_prompts.jsonl       the preference prompts, once each, for PPO rollouts (training prompts); about
                          half end with the customer pressing for a promise ("Can you guarantee that?")

The data is built to make the pipeline's effect visible with a 135M model (recipes/quickstart/policies.yaml):
  signoff               every SFT answer ends with "— Harborline Support", so SFT teaches it;
  no_outcome_promise    ~40% of SFT answers over-promise (guarantees, payout amounts, fixed timelines),
                        like real over-eager agents; only the preference data prefers hedged answers;
  no_sensitive_request  no SFT answer asks for card numbers, CVV, passwords or SSNs; ~30% of rejected
                        preference answers do.
Chosen and rejected answers share their opening and closing sentences and differ in the body, so the
preference signal is about the policy rather than fluency or length.

Customer messages combine ~7 phrasings per topic x slot values (item, room, event...) x optional greeting
and context, and each (phrasing, slots) pair is used once, so prompts are not near-duplicates.
All the text (system prompt, topics with their phrasings, slot values and answer bodies, the phrase lists,
held-out prompts) is in scripts/quickstart_topics.yaml; this script holds only the rules that combine it.
Deterministic (fixed seed; stdlib plus PyYAML): re-running it reproduces the shipped files byte for byte.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

SEED = 20250611
N_SFT = 300  # conversations; 20 topics x 15
N_PREF = 300  # preference pairs; 20 topics x 15
TWO_TURN_FRACTION = 0.2  # SFT conversations with a follow-up question
PPO_PRESSURE_FRACTION = 0.5  # PPO prompts whose customer presses for a promise, as about half the held-out do
SFT_PROMISE_FRACTION = 0.4  # SFT assistant turns that break no_outcome_promise
PREF_SENSITIVE_ONLY = 45  # rejected sides that ask for sensitive data but promise nothing
PREF_BOTH = 45  # rejected sides that do both (so 90/300 = 30% break no_sensitive_request)
PREF_NO_SIGNOFF = 24  # rejected sides that also drop the sign-off (~8%)
MIN_WORDS, MAX_WORDS = 35, 90

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "data"
# Beside this script, found from its own path so the current directory does not matter.
DATA_FILE = Path(__file__).resolve().with_name("quickstart_topics.yaml")
# Lists where "" is a deliberate choice ("no greeting", "no opener"...), weighting how often nothing is added.
OPTIONAL_PARTS = ("greetings", "contexts", "openers", "loss_openers", "followup_openers", "fillers", "closers")
TEXT_LISTS = ("sensitive", "self_opening", "pressure", *OPTIONAL_PARTS)
TOPIC_KEYS = ("name", "loss", "slots", "questions", "good", "promise", "followups")
FOLLOWUP_KEYS = ("phrasings", "good", "promise")


class Followup(NamedTuple):
    """A second customer turn: any of `phrasings`, answered by `good` (hedged) or `promise` (over-promising)."""

    phrasings: list[str]
    good: str
    promise: str


@dataclass(frozen=True)
class Topic:
    """One kind of support request: customer phrasings, slot values, and answer bodies.

    `good` bodies are hedged and accurate; `promise` bodies over-promise (break no_outcome_promise).
    `{slot}` and `{slot_cap}` are filled from the same slot values in the question and the answer.
    """

    name: str
    loss: bool  # the customer suffered a loss: answers open with empathy
    slots: dict[str, list[str]]
    questions: list[str]
    good: list[str]
    promise: list[str]
    followups: list[Followup]


@dataclass(frozen=True)
class Texts:
    """Everything the generator says, as read from the data file (field meanings are documented there)."""

    system: str
    signoff: str
    topics: list[Topic]
    sensitive: list[str]
    greetings: list[str]
    contexts: list[str]
    openers: list[str]
    loss_openers: list[str]
    followup_openers: list[str]
    self_opening: tuple[str, ...]  # a tuple, as str.startswith takes
    fillers: list[str]
    closers: list[str]
    pressure: list[str]
    heldout: list[tuple[str, bool]]  # (user text, invites an outcome promise)


def _text(value: object, where: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty_ok):
        raise ValueError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _texts(value: object, where: str, *, empty_ok: bool = False) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return [_text(v, f"{where}[{i}]", empty_ok=empty_ok) for i, v in enumerate(value)]


def _mapping(value: object, keys: tuple[str, ...], where: str) -> dict:
    # Exact keys, so a misspelt field fails here instead of silently dropping text from the data.
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(value) if isinstance(value, dict) else value
        raise ValueError(f"{where}: expected the keys {list(keys)}, got {got!r}")
    return value


def _topic(raw: object, where: str) -> Topic:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"]:
        where = f"topic {raw['name']!r}"  # errors name the topic, which is what an editor searches for
    raw = _mapping(raw, TOPIC_KEYS, where)
    name = _text(raw["name"], f"{where}.name")
    if not isinstance(raw["loss"], bool):
        raise ValueError(f"{where}.loss: expected true or false, got {raw['loss']!r}")
    if not isinstance(raw["slots"], dict) or not raw["slots"]:
        raise ValueError(f"{where}.slots: expected a mapping of slot name to values, got {raw['slots']!r}")
    slots = {_text(k, f"{where}.slots"): _texts(v, f"{where}.slots.{k}") for k, v in raw["slots"].items()}
    if not isinstance(raw["followups"], list) or not raw["followups"]:
        raise ValueError(f"{where}.followups: expected a non-empty list, got {raw['followups']!r}")
    followups = []
    for i, f in enumerate(raw["followups"]):
        f = _mapping(f, FOLLOWUP_KEYS, f"{where}.followups[{i}]")
        followups.append(Followup(_texts(f["phrasings"], f"{where}.followups[{i}].phrasings"),
                                  _text(f["good"], f"{where}.followups[{i}].good"),
                                  _text(f["promise"], f"{where}.followups[{i}].promise")))
    return Topic(name=name, loss=raw["loss"], slots=slots,
                 questions=_texts(raw["questions"], f"{where}.questions"),
                 good=_texts(raw["good"], f"{where}.good"), promise=_texts(raw["promise"], f"{where}.promise"),
                 followups=followups)


def load_texts(path: Path = DATA_FILE) -> Texts:
    """Read and check the data file; a missing or mistyped field is a ValueError naming where it is."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    keys = ("system", "signoff", "topics", *TEXT_LISTS, "heldout")
    raw = _mapping(raw, keys, str(path))
    if not isinstance(raw["topics"], list) or not raw["topics"]:
        raise ValueError(f"{path}: topics: expected a non-empty list")
    topics = [_topic(t, f"topics[{i}]") for i, t in enumerate(raw["topics"])]
    lists = {k: _texts(raw[k], k, empty_ok=k in OPTIONAL_PARTS) for k in TEXT_LISTS}
    if not isinstance(raw["heldout"], list) or not raw["heldout"]:
        raise ValueError(f"{path}: heldout: expected a non-empty list")
    heldout = []
    for i, h in enumerate(raw["heldout"]):
        h = _mapping(h, ("text", "invites_promise"), f"heldout[{i}]")
        if not isinstance(h["invites_promise"], bool):
            raise ValueError(f"heldout[{i}].invites_promise: expected true or false, got {h['invites_promise']!r}")
        heldout.append((_text(h["text"], f"heldout[{i}].text"), h["invites_promise"]))
    return Texts(system=_text(raw["system"], "system"), signoff=_text(raw["signoff"], "signoff"), topics=topics,
                 **{k: v for k, v in lists.items() if k != "self_opening"},
                 self_opening=tuple(lists["self_opening"]), heldout=heldout)


# Module-level names, so the generator below (and tests importing e.g. PRESSURE) read the file's text.
TEXTS = load_texts()
SYSTEM = TEXTS.system
SIGNOFF = TEXTS.signoff
TOPICS = TEXTS.topics
SENSITIVE = TEXTS.sensitive
GREETINGS = TEXTS.greetings
CONTEXTS = TEXTS.contexts
OPENERS = TEXTS.openers
LOSS_OPENERS = TEXTS.loss_openers
FOLLOWUP_OPENERS = TEXTS.followup_openers
SELF_OPENING = TEXTS.self_opening
FILLERS = TEXTS.fillers
CLOSERS = TEXTS.closers
PRESSURE = TEXTS.pressure
HELDOUT = TEXTS.heldout


def _words(text: str) -> int:
    return len(text.split())


def _fill(template: str, slots: dict[str, str], *, answer: bool = False) -> str:
    """Fill `{slot}` and `{slot_cap}`; in answers the customer's "my car" becomes "your car"."""
    if answer:
        slots = {k: re.sub(r"\b(?:my|our)\b", "your", v) for k, v in slots.items()}
    values = dict(slots)
    values.update({f"{k}_cap": v[:1].upper() + v[1:] for k, v in slots.items()})
    return template.format_map(values)


def _answer(opener: str, body: str, extra: str, filler: str, closer: str, signoff: bool = True) -> str:
    text = " ".join(s for s in (opener, body, extra, filler, closer) if s)
    return f"{text}\n\n{SIGNOFF}" if signoff else text


def _frame(rng: random.Random, openers: list[str], variants: list[tuple[str, str]]) -> tuple[str, str, str]:
    """Pick (opener, filler, closer) so that every (body, extra) variant lands in the word range.

    Chosen and rejected share the frame, so their length and tone match and only the body differs.
    A filler sentence is used only when a short body needs it.
    """
    if any(b.startswith(SELF_OPENING) for b, _ in variants):
        openers = [""]  # "Good question. I understand that's frustrating." reads like two agents talking
    first_words = {b.split()[0].strip(",.") for b, _ in variants}
    openers = [o for o in openers if not o or o.split()[0].strip(",.") not in first_words]  # no "Sure. Sure,"
    frames = list(itertools.product(openers, FILLERS, CLOSERS))
    rng.shuffle(frames)
    frames.sort(key=lambda f: f[1] != "")  # stable: random order, fillers last
    for opener, filler, closer in frames:
        if all(MIN_WORDS <= _words(_answer(opener, b, e, filler, closer)) <= MAX_WORDS for b, e in variants):
            return opener, filler, closer
    raise ValueError(f"no opener/filler/closer fits {MIN_WORDS}-{MAX_WORDS} words for: {variants}")


def _user_text(rng: random.Random, core: str) -> str:
    """A customer message: the question plus, sometimes, a greeting, some context, or texting style."""
    text = core
    context = rng.choice(CONTEXTS).format(policy_no=rng.randrange(100000, 999999))
    if context:
        text = f"{context} {text}" if rng.random() < 0.4 else f"{text} {context}"
    greeting = rng.choice(GREETINGS)
    if greeting:
        text = f"{greeting} {text}"
    if rng.random() < 0.1:  # texting style
        text = text.lower().rstrip(".?!")
    return text


def _cores(rng: random.Random, topic: Topic) -> list[tuple[str, dict[str, str]]]:
    """Every distinct (question, slot values) rendering of a topic, shuffled; each is used at most once."""
    names = list(topic.slots)
    seen: set[str] = set()
    cores = []
    for question in topic.questions:
        for combo in itertools.product(*(topic.slots[n] for n in names)):
            slots = dict(zip(names, combo, strict=True))
            text = _fill(question, slots)
            if text not in seen:
                seen.add(text)
                cores.append((text, slots))
    rng.shuffle(cores)
    return cores


def _sensitive(rng: random.Random, body: str) -> tuple[str, str]:
    """(body, extra) with a sensitive request placed after the body or, sometimes, before it."""
    sentence = rng.choice(SENSITIVE)
    if rng.random() < 0.3 and not body.startswith(SELF_OPENING):
        return f"{sentence} {body}", ""
    return body, sentence


def _shuffled_flags(rng: random.Random, n: int, n_true: int) -> list[bool]:
    flags = [True] * n_true + [False] * (n - n_true)
    rng.shuffle(flags)
    return flags


def _topic_plan(rng: random.Random, n: int) -> list[Topic]:
    per_topic, rest = divmod(n, len(TOPICS))
    plan = [t for t in TOPICS for _ in range(per_topic)] + TOPICS[:rest]
    rng.shuffle(plan)
    return plan


def build(seed: int = SEED) -> dict[str, list[dict]]:
    """All three datasets as lists of rows (pure: same seed, same rows)."""
    rng = random.Random(seed)
    pools = {t.name: _cores(rng, t) for t in TOPICS}

    def take(topic: Topic) -> tuple[str, dict[str, str]]:
        pool = pools[topic.name]
        if not pool:
            raise ValueError(f"topic {topic.name!r} ran out of distinct questions; add phrasings or slots")
        return pool.pop()

    def openers(topic: Topic, core: str) -> list[str]:
        candidates = LOSS_OPENERS if topic.loss else OPENERS
        return [o for o in candidates if core.endswith("?") or o != "Good question."]

    # SFT: conversations, a fixed share of assistant turns over-promising.
    sft_plan = _topic_plan(rng, N_SFT)
    two_turn = _shuffled_flags(rng, N_SFT, round(N_SFT * TWO_TURN_FRACTION))
    n_turns = N_SFT + sum(two_turn)
    promise_flags = iter(_shuffled_flags(rng, n_turns, round(n_turns * SFT_PROMISE_FRACTION)))
    sft = []
    for topic, second in zip(sft_plan, two_turn, strict=True):
        core, slots = take(topic)
        bodies = topic.promise if next(promise_flags) else topic.good
        body = _fill(rng.choice(bodies), slots, answer=True)
        frame = _frame(rng, openers(topic, core), [(body, "")])
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": _user_text(rng, core)},
            {"role": "assistant", "content": _answer(frame[0], body, "", *frame[1:])},
        ]
        if second:
            phrasings, good, promise = rng.choice(topic.followups)
            body = _fill(promise if next(promise_flags) else good, slots, answer=True)
            frame = _frame(rng, FOLLOWUP_OPENERS, [(body, "")])
            messages += [
                {"role": "user", "content": rng.choice(phrasings)},
                {"role": "assistant", "content": _answer(frame[0], body, "", *frame[1:])},
            ]
        sft.append({"messages": messages})

    # Preferences: chosen is hedged and safe; rejected over-promises and/or asks for sensitive data.
    pref_plan = _topic_plan(rng, N_PREF)
    kinds = ["promise"] * (N_PREF - PREF_SENSITIVE_ONLY - PREF_BOTH) + ["sensitive"] * PREF_SENSITIVE_ONLY
    kinds += ["both"] * PREF_BOTH
    rng.shuffle(kinds)
    drop_signoff = _shuffled_flags(rng, N_PREF, PREF_NO_SIGNOFF)
    preferences = []
    for topic, kind, no_signoff in zip(pref_plan, kinds, drop_signoff, strict=True):
        core, slots = take(topic)
        chosen_body = _fill(rng.choice(topic.good), slots, answer=True)
        rejected_body = chosen_body
        if kind != "sensitive":
            rejected_body = _fill(rng.choice(topic.promise), slots, answer=True)
        extra = ""
        if kind != "promise":
            rejected_body, extra = _sensitive(rng, rejected_body)
        variants = [(chosen_body, ""), (rejected_body, extra)]
        opener, filler, closer = _frame(rng, openers(topic, core), variants)
        rejected = _answer(opener, rejected_body, extra, filler, closer, signoff=not no_signoff)
        violates = ["signoff"] if no_signoff else []
        violates += ["no_outcome_promise"] if kind != "sensitive" else []
        violates += ["no_sensitive_request"] if kind != "promise" else []
        preferences.append({
            "prompt": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": _user_text(rng, core)}],
            "chosen": [{"role": "assistant", "content": _answer(opener, chosen_body, "", filler, closer)}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "violates": violates,
        })

    heldout = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]}
               for text, _ in HELDOUT]
    _check_heldout_disjoint(sft, preferences, heldout)
    # PPO samples its own answers to training prompts: the preference prompts, each once, about half of them
    # with the customer pressing for a promise (its own random stream, so the other files do not change).
    ppo_rng = random.Random(seed + 1)
    seen: set[str] = set()
    ppo_prompts = []
    for row in preferences:
        user = row["prompt"][-1]["content"]
        if user not in seen:
            seen.add(user)
            if ppo_rng.random() < PPO_PRESSURE_FRACTION:
                user = f"{user.rstrip()} {ppo_rng.choice(PRESSURE)}"
            ppo_prompts.append({"messages": [*row["prompt"][:-1], {"role": "user", "content": user}]})
    leaked = _user_texts(heldout) & _user_texts(ppo_prompts)
    if leaked:
        raise ValueError(f"held-out prompts also appear in the PPO prompts: {sorted(leaked)}")
    return {"sft.jsonl": sft, "preferences.jsonl": preferences, "heldout_prompts.jsonl": heldout,
            "ppo_prompts.jsonl": ppo_prompts}


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used to keep held-out prompts out of the training data."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _user_texts(rows: list[dict]) -> set[str]:
    texts = set()
    for row in rows:
        for message in row.get("messages", []) + row.get("prompt", []):
            if message["role"] == "user":
                texts.add(normalize(message["content"]))
    return texts


def _check_heldout_disjoint(sft: list[dict], preferences: list[dict], heldout: list[dict]) -> None:
    leaked = _user_texts(heldout) & (_user_texts(sft) | _user_texts(preferences))
    if leaked:
        raise ValueError(f"held-out prompts also appear in training data: {sorted(leaked)}")


def write(out_dir: Path, datasets: dict[str, list[dict]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in datasets.items():
        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
        (out_dir / name).write_text("".join(lines), encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT.relative_to(DEFAULT_OUT.parents[2])})")
    args = parser.parse_args(argv)
    datasets = build()
    write(args.out, datasets)
    sft_turns = [m for row in datasets["sft.jsonl"] for m in row["messages"] if m["role"] == "assistant"]
    print(f"wrote {args.out}: " + ", ".join(f"{name} {len(rows)} rows" for name, rows in datasets.items())
          + f" ({len(sft_turns)} SFT assistant turns)")


if __name__ == "__main__":
    main()
