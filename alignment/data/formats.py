"""Recognise, validate and normalise the five data formats (TRL / Hugging Face conventions).

=============  =========================================================  ===========================
kind           fields                                                     variant
=============  =========================================================  ===========================
sft            ``messages``                                               ``messages``
               ``prompt`` + ``completion``                                ``prompt_completion``
               ``text``                                                   ``text``
preference     ``prompt`` + ``chosen`` + ``rejected``                     ``explicit_prompt``
               ``chosen`` + ``rejected`` (full conversations)             ``implicit_prompt``
               either, optionally ``weight`` (a number >= 0, default 1)
ranked         ``prompt`` + ``responses`` + ``ranks`` (lower = better)    ``conversational``/``standard``
unpaired       ``prompt`` + ``completion`` + ``label`` (true = good)      ``conversational``/``standard``
prompts        ``prompt``, or ``messages`` ending with a user turn        ``prompt`` / ``messages``
=============  =========================================================  ===========================

Text fields are either plain strings ("standard") or lists of ``{role, content}`` messages
("conversational"). :func:`to_conversation` turns any valid record into message lists, so the phases
only ever see one shape. Validation and normalisation are the same code (:func:`_normalise`), so a
record that validates always normalises.

TRL validates lazily, deep inside a trainer, with a KeyError; here every record is checked up front and
each problem names ``file:line`` and the field path (``messages[2].role``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from alignment.data.io import LINE_COLUMN, cache_key, cached, iter_records, keep, load_records
from alignment.errors import AlignError

FORMATS = ("sft", "preference", "ranked", "unpaired", "prompts")
ROLES = ("system", "user", "assistant", "tool")
PROMPT_END_ROLES = ("user", "tool")  # the model answers next
COMPLETION_ROLES = ("assistant", "tool")  # an answer may call tools and read their results

Message = dict[str, Any]
Problems = list[tuple[str, str]]  # (field path, what is wrong)

# kind -> (variant, required fields, how to describe it to a user), in order of precedence.
VARIANTS: dict[str, tuple[tuple[str, tuple[str, ...], str], ...]] = {
    "sft": (
        ("messages", ("messages",), "`messages` (a list of {role, content})"),
        ("prompt_completion", ("prompt", "completion"), "`prompt` + `completion`"),
        ("text", ("text",), "`text`"),
    ),
    "preference": (
        ("explicit_prompt", ("prompt", "chosen", "rejected"), "`prompt` + `chosen` + `rejected`"),
        (
            "implicit_prompt",
            ("chosen", "rejected"),
            "`chosen` + `rejected` as full conversations that share their opening turns (implicit prompt)",
        ),
    ),
    "ranked": (("ranked", ("prompt", "responses", "ranks"), "`prompt` + `responses` + `ranks`"),),
    "unpaired": (("unpaired", ("prompt", "completion", "label"), "`prompt` + `completion` + `label`"),),
    "prompts": (
        ("prompt", ("prompt",), "`prompt` (a string or messages ending with a user turn)"),
        ("messages", ("messages",), "`messages` ending with a user turn"),
    ),
}
IDENTICAL = "is identical to 'chosen'; a preference pair needs two different answers"
NO_SHARED_PROMPT = (
    "shares no opening {} with 'rejected', so there is no implicit prompt; add a 'prompt' field"
)
# Columns that may hold messages; in a CSV they arrive as JSON text.
MESSAGE_FIELDS = ("messages", "prompt", "completion", "chosen", "rejected", "responses")


@dataclass(frozen=True)
class FormatInfo:
    """What a dataset holds: its kind, which variant of that kind, and whether its text is messages."""

    kind: str
    variant: str
    conversational: bool = False


def detect_variant(ds: datasets.Dataset, kind: str, source: str) -> FormatInfo:
    """Pick the variant of ``kind`` from the dataset's columns (the first record decides ``conversational``).

    Raises AlignError naming the missing field and listing the variants the kind accepts.
    """
    if kind not in FORMATS:
        raise AlignError(f"unknown data kind '{kind}'; expected one of {', '.join(FORMATS)}", field="kind")
    columns = [c for c in ds.column_names if c != LINE_COLUMN]
    for variant, required, _ in VARIANTS[kind]:
        if all(name in columns for name in required):
            first = next(iter_records(ds), (0, {}))[1]
            conversational = any(_is_message_list(first.get(name)) for name in required)
            if kind in ("ranked", "unpaired"):
                variant = "conversational" if conversational else "standard"
            return FormatInfo(kind, variant, conversational)
    raise _missing_fields(kind, columns, source)


def validate(ds: datasets.Dataset, kind: str, source: str, max_errors: int = 20) -> FormatInfo:
    """Check every record of ``ds`` as ``kind`` data and return its format.

    All records are checked so a user can fix a file in one pass: one AlignError whose ``file``/``line``/
    ``field`` are those of the first problem and whose message lists up to ``max_errors`` problems.
    """
    info = detect_variant(ds, kind, source)
    found: list[tuple[int, str, str]] = []
    total = 0
    for line, record in iter_records(ds):
        _, problems = _normalise(record, kind, info.variant)
        total += len(problems)
        found.extend((line, field, problem) for field, problem in problems[: max_errors - len(found)])
    if not found:
        return info
    line, field, problem = found[0]
    if total > 1:
        rest = [str(AlignError(p, file=source, line=n, field=f)) for n, f, p in found[1:]]
        more = [f"... and {total - len(found)} more"] if total > len(found) else []
        problem += f"\n{total - 1} more problem{'s' if total > 2 else ''}:\n  " + "\n  ".join(rest + more)
    raise AlignError(problem, file=source, line=line, field=field)


def to_conversation(record: dict[str, Any], kind: str, variant: str) -> dict[str, Any]:
    """The normalised view of one record; extra columns (metadata, ``__line__``) are dropped.

    - sft: ``{"messages": [...]}`` (prompt/completion strings become user/assistant turns), or
      ``{"text": str}`` for the text variant;
    - preference: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``, implicit prompts split off, plus
      ``"weight": float`` when the record's weight is not 1 (absent means 1, so a row written with
      ``weight: 1`` and the same row without it are one record to de-duplication);
    - ranked: ``{"prompt": [...], "responses": [[...], ...], "ranks": [...]}``;
    - unpaired: ``{"prompt": [...], "completion": [...], "label": bool}``;
    - prompts: ``{"prompt": [...]}``.

    Raises AlignError (no file or line: the caller knows those) if the record is invalid.
    """
    normalised, problems = _normalise(record, kind, variant)
    if problems:
        field, problem = problems[0]
        raise AlignError(problem, field=field)
    assert normalised is not None
    return normalised


def normalise_dataset(ds: datasets.Dataset, info: FormatInfo) -> datasets.Dataset:
    """``to_conversation`` over a validated dataset; keeps ``__line__`` so later errors can still cite it.

    ``keep_in_memory``: a dataset loaded from disk would otherwise get cache files written into the
    user's data directory.
    """
    drop = [c for c in ds.column_names if c != LINE_COLUMN]
    return ds.map(
        lambda r: to_conversation(r, info.kind, info.variant), remove_columns=drop, keep_in_memory=True
    )


def load_dataset_file(path: str | Path, kind: str) -> tuple[datasets.Dataset, FormatInfo]:
    """Load and validate a data file in one call: the entry point for phases and ``align data validate``.

    Inside :func:`~alignment.data.io.one_read_per_file` a file is read and validated as one kind once."""
    key = cache_key(path)
    if (loaded := cached(key, ("validated", kind))) is not None:
        return loaded
    ds = load_records(path)
    return keep(key, ("validated", kind), (ds, validate(ds, kind, str(path))))


# ----------------------------------------------------------------------------------------- detection


def _missing_fields(kind: str, columns: list[str], source: str) -> AlignError:
    """Name what the closest variant lacks, and every variant the kind accepts."""
    variants = VARIANTS[kind]
    options = " or ".join(description for _, _, description in variants)
    have = ", ".join(columns) or "none"
    _, required, description = max(variants, key=lambda v: sum(name in columns for name in v[1]))
    missing = [name for name in required if name not in columns]
    message = f"{kind} data needs {options}; the columns are: {have}"
    if len(missing) < len(required):
        message = (f"missing for {description}; " if len(variants) > 1 else "missing; ") + message
        return AlignError(message, file=source, field=missing[0])
    return AlignError(message, file=source)


# ------------------------------------------------------------------------------------ normalisation


def _normalise(record: dict[str, Any], kind: str, variant: str) -> tuple[dict[str, Any] | None, Problems]:
    """Validate and normalise one record: (normalised record or None, problems)."""
    problems: Problems = []
    if kind not in FORMATS:
        return None, [("kind", f"unknown data kind '{kind}'; expected one of {', '.join(FORMATS)}")]
    normalise = _NORMALISERS[kind]
    required = _required(kind, variant)
    for name in required:
        if record.get(name) is None:
            problems.append((name, f"missing; this {kind} data needs {' + '.join(required)} on every record"))
    if problems:
        return None, problems
    normalised = normalise(record, variant, problems)
    return (None if problems else normalised), problems


def _required(kind: str, variant: str) -> tuple[str, ...]:
    for name, required, _ in VARIANTS[kind]:
        if name == variant or len(VARIANTS[kind]) == 1:
            return required
    raise AlignError(f"unknown {kind} variant '{variant}'", field="variant")


def _sft(record: dict[str, Any], variant: str, problems: Problems) -> dict[str, Any] | None:
    if variant == "text":
        text = record["text"]
        if not isinstance(text, str):
            problems.append(("text", f"expected a string, got {_type_name(text)}"))
        return {"text": text}
    if variant == "messages":
        messages = _message_list(record["messages"], "messages", problems)
        if messages is not None and not any(m["role"] == "assistant" for m in messages):
            problems.append(("messages", "has no assistant turn; SFT learns from the assistant's answers"))
        return {"messages": messages}
    prompt = _prompt_turns(record["prompt"], "prompt", problems)
    completion = _completion_turns(record["completion"], "completion", problems)
    return {"messages": (prompt or []) + (completion or [])}


def _preference(record: dict[str, Any], variant: str, problems: Problems) -> dict[str, Any] | None:
    weight = _weight(record.get("weight"), problems)
    if variant == "implicit_prompt":
        normalised = _split_implicit(record["chosen"], record["rejected"], problems)
    else:
        prompt = _prompt_turns(record["prompt"], "prompt", problems)
        chosen = _completion_turns(record["chosen"], "chosen", problems)
        rejected = _completion_turns(record["rejected"], "rejected", problems)
        if chosen is not None and chosen == rejected:
            problems.append(("rejected", IDENTICAL))
        normalised = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    # Only a weight other than 1 is kept: absent means 1, and the normalised record is also the
    # de-duplication key, so rows that train alike compare equal and rows that weigh differently do not.
    if normalised is not None and weight is not None and weight != 1.0:
        normalised["weight"] = weight
    return normalised


def _ranked(record: dict[str, Any], variant: str, problems: Problems) -> dict[str, Any] | None:
    prompt = _prompt_turns(record["prompt"], "prompt", problems)
    responses = _parse_json(record["responses"], "responses", problems, strict=True)
    ranks = _parse_json(record["ranks"], "ranks", problems, strict=True)
    if not isinstance(responses, list):
        if responses is not None:
            problems.append(("responses", f"expected a list of responses, got {_type_name(responses)}"))
        return None
    if len(responses) < 2:
        problems.append(("responses", f"needs at least 2 responses to rank, got {len(responses)}"))
    turns = [_completion_turns(r, f"responses[{i}]", problems) for i, r in enumerate(responses)]
    if not isinstance(ranks, list):
        if ranks is not None:
            problems.append(("ranks", f"expected a list of numbers, got {_type_name(ranks)}"))
        return None
    for i, rank in enumerate(ranks):
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not math.isfinite(rank):
            problems.append((f"ranks[{i}]", f"expected a number (lower = better), got {rank!r}"))
    if len(ranks) != len(responses):
        problems.append(("ranks", f"has {len(ranks)} ranks but 'responses' has {len(responses)}"))
    return {"prompt": prompt, "responses": turns, "ranks": ranks}


def _unpaired(record: dict[str, Any], variant: str, problems: Problems) -> dict[str, Any] | None:
    prompt = _prompt_turns(record["prompt"], "prompt", problems)
    completion = _completion_turns(record["completion"], "completion", problems)
    return {"prompt": prompt, "completion": completion, "label": _label(record["label"], problems)}


def _prompts(record: dict[str, Any], variant: str, problems: Problems) -> dict[str, Any] | None:
    # A blank prompt is not a format error here: the feedback app skips such rows when asked to, and the
    # training and evaluation loaders refuse them (both through `alignment.data.prompts.load_prompt_file`).
    if variant == "prompt":
        return {"prompt": _prompt_turns(record["prompt"], "prompt", problems, allow_blank=True)}
    messages = _message_list(record["messages"], "messages", problems)
    if messages is not None:
        _check_prompt_end(
            messages, "messages", problems, " (drop the answer, or validate the file as sft data)", allow_blank=True
        )
    return {"prompt": messages}


_NORMALISERS: dict[str, Callable[[dict[str, Any], str, Problems], dict[str, Any] | None]] = {
    "sft": _sft,
    "preference": _preference,
    "ranked": _ranked,
    "unpaired": _unpaired,
    "prompts": _prompts,
}


# ------------------------------------------------------------------------------------------ messages


def _type_name(value: Any) -> str:
    return "a string" if isinstance(value, str) else type(value).__name__


def _is_message_list(value: Any) -> bool:
    value = _parse_json(value, "", [], strict=False)
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _parse_json(value: Any, field: str, problems: Problems, *, strict: bool) -> Any:
    """Parse a CSV cell holding a JSON list (``[{"role": ...}]``).

    ``strict`` for list-only fields (``messages``, ``responses``, ``ranks``): bad JSON is a problem.
    Otherwise the field may be plain text that merely starts with "[" ("[INST] ..."), so it is parsed
    only if it turns out to be a list of objects, and kept as text otherwise.
    """
    if not (isinstance(value, str) and value.lstrip().startswith("[")):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        if strict:
            problem = f"looks like a JSON list but is not valid JSON: {e.msg} (column {e.colno})"
            problems.append((field, problem))
            return None
        return value
    if strict or (isinstance(parsed, list) and all(isinstance(m, dict) for m in parsed)):
        return parsed
    return value


def _message(value: Any, field: str, problems: Problems) -> Message | None:
    if not isinstance(value, dict):
        problems.append((field, f"expected a message {{role, content}}, got {_type_name(value)}"))
        return None
    before = len(problems)
    role, content = value.get("role"), value.get("content")
    if role is None:
        problems.append((f"{field}.role", f"missing; expected one of {', '.join(ROLES)}"))
    elif role not in ROLES:
        problems.append((f"{field}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}"))
    if content is None:
        problems.append((f"{field}.content", "missing"))
    elif not isinstance(content, str):
        problems.append((f"{field}.content", f"expected a string, got {_type_name(content)}"))
    # Keys set to None are pyarrow's filling for keys other messages have (e.g. `name`): not real.
    return {k: v for k, v in value.items() if v is not None} if len(problems) == before else None


def _message_list(value: Any, field: str, problems: Problems) -> list[Message] | None:
    """A non-empty list of valid messages, or None with the problems recorded."""
    value = _parse_json(value, field, problems, strict=True)
    if value is None:
        return None
    if not isinstance(value, list):
        problems.append((field, f"expected a list of messages, got {_type_name(value)}"))
        return None
    if not value:
        problems.append((field, "is an empty list; expected at least one message"))
        return None
    messages = [_message(m, f"{field}[{i}]", problems) for i, m in enumerate(value)]
    return None if any(m is None for m in messages) else messages  # type: ignore[return-value]


def _turns(value: Any, field: str, role: str, problems: Problems) -> list[Message] | None:
    """A string becomes one ``role`` message; a list must be valid messages."""
    value = _parse_json(value, field, problems, strict=False)
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _message_list(value, field, problems)
    problems.append((field, f"expected a string or a list of messages, got {_type_name(value)}"))
    return None


def _prompt_turns(value: Any, field: str, problems: Problems, *, allow_blank: bool = False) -> list[Message] | None:
    """Prompt messages must end where the model answers: with a user (or tool-result) turn."""
    turns = _turns(value, field, "user", problems)
    if turns is not None:
        _check_prompt_end(turns, field, problems, plain=isinstance(_parse_json(value, field, [], strict=False), str),
                          allow_blank=allow_blank)
    return turns


def blank_prompt(turns: list[Message]) -> bool:
    """The prompt's last turn has no text."""
    return not turns or not str(turns[-1].get("content") or "").strip()


def _check_prompt_end(turns: list[Message], field: str, problems: Problems, hint: str = "", *,
                      plain: bool = False, allow_blank: bool = False) -> None:
    """The last turn is the user's (or a tool result) and has text: an empty prompt trains the model to answer
    nothing in particular, and every answer to it teaches the same thing. ``plain``: the prompt was one string."""
    last = len(turns) - 1
    role = turns[last]["role"]
    if role not in PROMPT_END_ROLES:
        problem = f"a prompt must end with a user turn, this one ends with '{role}'{hint}"
        problems.append((f"{field}[{last}].role", problem))
    elif not allow_blank and blank_prompt(turns):
        problems.append((field if plain else f"{field}[{last}].content",
                         "is empty; a prompt needs the text the answer responds to"))


def _completion_turns(value: Any, field: str, problems: Problems) -> list[Message] | None:
    """Completion messages are the model's: assistant turns (and tool results between them)."""
    turns = _turns(value, field, "assistant", problems)
    if turns is None:
        return None
    for i, message in enumerate(turns):
        role = message["role"]
        if role not in COMPLETION_ROLES:
            problem = f"expected 'assistant' in a completion, got '{role}'; earlier turns belong in 'prompt'"
            problems.append((f"{field}[{i}].role", problem))
            return None
    if turns[-1]["role"] != "assistant":
        problems.append((f"{field}[{len(turns) - 1}].role", "a completion must end with an assistant turn"))
    return turns


def _label(value: Any, problems: Problems) -> bool | None:
    """true = a good answer, false = a negative example. CSV gives "true"/"false"/"1"/"0"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    problems.append(("label", f"expected true or false, got {value!r}"))
    return None


def _weight(value: Any, problems: Problems) -> float | None:
    """A preference pair's loss weight: a finite number >= 0; None (absent, or an empty CSV cell) means 1.

    CSV cells arrive as strings, so a numeric string is read as its number."""
    if value is None:
        return None
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
        problems.append(("weight", f"expected a number >= 0 (the pair's loss weight; 1 when absent), got {value!r}"))
        return None
    return float(number)


# ----------------------------------------------------------------------------------- implicit prompt


def _split_implicit(chosen: Any, rejected: Any, problems: Problems) -> dict[str, Any] | None:
    """Split full ``chosen``/``rejected`` conversations into the prompt they share and two answers.

    The prompt is the longest common prefix of messages (TRL's ``extract_prompt``); for plain strings,
    the longest common prefix of text, backed off to a word boundary.
    """
    chosen = _parse_json(chosen, "chosen", problems, strict=False)
    rejected = _parse_json(rejected, "rejected", problems, strict=False)
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _split_text(chosen, rejected, problems)
    if isinstance(chosen, str) != isinstance(rejected, str):
        problems.append(("rejected", "'chosen' and 'rejected' must both be strings or both be message lists"))
        return None
    chosen = _message_list(chosen, "chosen", problems)
    rejected = _message_list(rejected, "rejected", problems)
    if chosen is None or rejected is None:
        return None
    if chosen == rejected:
        problems.append(("rejected", IDENTICAL))
        return None
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        problems.append(("chosen", NO_SHARED_PROMPT.format("turns")))
        return None
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if k == len(turns):
            problems.append((name, "has no turns after the prompt it shares with the other answer"))
        elif turns[k]["role"] != "assistant":
            problem = (
                f"'chosen' and 'rejected' first differ at a '{turns[k]['role']}' turn; "
                "the shared prompt must end where the answers begin (an assistant turn)"
            )
            problems.append((f"{name}[{k}].role", problem))
        elif turns[-1]["role"] != "assistant":
            problems.append((f"{name}[{len(turns) - 1}].role", "must end with an assistant turn"))
    if not problems and chosen[-1] == rejected[-1]:
        problems.append(("rejected", "ends with the same turn as 'chosen'; the last turns must differ"))
    if problems:
        return None
    return {"prompt": chosen[:k], "chosen": chosen[k:], "rejected": rejected[k:]}


def _split_text(chosen: str, rejected: str, problems: Problems) -> dict[str, Any] | None:
    if chosen == rejected:
        problems.append(("rejected", IDENTICAL))
        return None
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    # Do not cut a word in two: "...A: yes" / "...A: yeah" share "...A: ye", the prompt is "...A: ".
    if k < len(chosen) and k < len(rejected) and not chosen[k].isspace() and not rejected[k].isspace():
        while k > 0 and not chosen[k - 1].isspace():
            k -= 1
    if k == 0:
        problems.append(("chosen", NO_SHARED_PROMPT.format("text")))
        return None
    if k == len(chosen) or k == len(rejected):
        name = "chosen" if k == len(chosen) else "rejected"
        problems.append((name, "has no text after the prompt it shares with the other answer"))
        return None
    return {
        "prompt": [{"role": "user", "content": chosen[:k]}],
        "chosen": [{"role": "assistant", "content": chosen[k:]}],
        "rejected": [{"role": "assistant", "content": rejected[k:]}],
    }
