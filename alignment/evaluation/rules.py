"""Domain rules: does an answer follow the rules the domain experts care about?

A :class:`DomainRule` is two lists of regular expressions read from a rules file (the ``policies:`` list of
``recipes/quickstart/policies.yaml``; the file and recipe keys keep the name users know):
patterns that must all be found in the answer, and patterns none of which may be found. Regexes are
cruder than a judge model, but they are cheap, deterministic and explainable, which is what a
before/after adherence table in a run report needs, and a domain expert can edit them without Python.

The loader is strict like the recipe loader: an unknown key, a missing name, a wrong type or a regex
that does not compile raises :class:`~alignment.errors.AlignError` naming the file, the YAML line and
the field (``policies[1].must_match[0]``). We walk the node tree from ``yaml.compose`` instead of the
plain ``yaml.safe_load`` result because only nodes keep their line numbers.

Stdlib + PyYAML only, so evaluation code and tests can import it without torch.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from alignment.errors import AlignError

ALL = "all"
"""Key of :func:`adherence` for the fraction of answers that pass every policy (a reserved name)."""

_TOP_KEYS = ("policies",)
_POLICY_KEYS = ("name", "description", "must_match", "must_not_match", "ignore_case")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

_TAG_STR = "tag:yaml.org,2002:str"
_TAG_BOOL = "tag:yaml.org,2002:bool"
_TAG_NULL = "tag:yaml.org,2002:null"
_TAG_KINDS = {
    _TAG_STR: "a string",
    _TAG_BOOL: "a boolean",
    _TAG_NULL: "nothing (null)",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
}


@dataclass(frozen=True)
class DomainRule:
    """One checkable rule about an answer.

    Attributes:
        name: short identifier, used as the column name in adherence tables.
        description: the rule in words, for people reading reports.
        must_match: patterns that must all be found (``re.search``) in a passing answer.
        must_not_match: patterns none of which may be found in a passing answer.
    """

    name: str
    description: str
    must_match: tuple[re.Pattern[str], ...]
    must_not_match: tuple[re.Pattern[str], ...]

    def check(self, answer: str) -> bool:
        """True when the answer follows this rule: every required pattern found, no forbidden one."""
        return all(p.search(answer) for p in self.must_match) and not any(
            p.search(answer) for p in self.must_not_match
        )


def check_answer(answer: str, rules: Sequence[DomainRule]) -> dict[str, bool]:
    """Per-rule verdicts for one answer, keyed by rule name (in the order the rules were given)."""
    return {rule.name: rule.check(answer) for rule in rules}


def adherence(answers: Sequence[str], rules: Sequence[DomainRule]) -> dict[str, float]:
    """Fraction of answers passing each rule, plus ``"all"``: the fraction passing every rule at once.

    The per-rule rates show which rule a training phase moved; ``"all"`` is the single number to compare
    across runs. An empty answer list or rule list is refused rather than reported as 0 or 1, because
    either would be a silent lie in a report.
    """
    if not answers:
        raise AlignError("no answers to score: adherence needs at least one answer")
    if not rules:
        raise AlignError("no policies to score against: give at least one policy")
    passed = {rule.name: 0 for rule in rules}
    passed_all = 0
    for answer in answers:
        verdicts = check_answer(answer, rules)
        for name, ok in verdicts.items():
            passed[name] += ok
        passed_all += all(verdicts.values())
    n = len(answers)
    rates = {name: count / n for name, count in passed.items()}
    rates[ALL] = passed_all / n
    return rates


def load_rules(path: str | Path) -> list[DomainRule]:
    """Read and validate a policies YAML file (format documented in ``recipes/quickstart/policies.yaml``).

    Strict on purpose: a typo such as ``must_macth`` would otherwise silently drop a rule and inflate the
    adherence numbers. Every error names the file, the line and the field.
    """
    path = Path(path)
    return parse_rules(read_rules_text(path), path)


def read_rules_text(path: str | Path) -> str:
    """The text of a policies file, unparsed (to store it, then :func:`parse_rules`); a missing or unreadable
    file is an AlignError naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AlignError("policies file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AlignError(f"cannot read policies file: {exc}", file=path) from None


def parse_rules(text: str, source: str | Path = "policies") -> list[DomainRule]:
    """Validate policies YAML given as text, as :func:`load_rules` validates a file: the same checks and messages,
    naming ``source`` where they name the file. For rules kept somewhere other than a file (a feedback store
    keeps the policies an evaluation was created with, since the file may not exist where they are read)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise AlignError(
            f"not valid YAML: {problem}", file=source, line=mark.line + 1 if mark is not None else None
        ) from None
    return _Reader(source).policies(root)


class _Reader:
    """Walks composed YAML nodes of one file, so every error can name its file, line and field."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def error(self, message: str, node: yaml.Node | None, field: str | None) -> AlignError:
        line = node.start_mark.line + 1 if node is not None else None
        return AlignError(message, file=self.path, line=line, field=field)

    def policies(self, root: yaml.Node | None) -> list[DomainRule]:
        if root is None:
            raise AlignError("file is empty: expected a top-level 'policies:' list", file=self.path)
        top = self.mapping(root, None, _TOP_KEYS)
        if "policies" not in top:
            raise self.error("missing key 'policies' (a list of policies)", root, "policies")
        seq = top["policies"][1]
        if not isinstance(seq, yaml.SequenceNode) or not seq.value:
            raise self.error("expected a non-empty list of policies", seq, "policies")
        result: list[DomainRule] = []
        first_line: dict[str, int] = {}
        for i, item in enumerate(seq.value):
            policy = self.policy(item, f"policies[{i}]")
            if policy.name in first_line:
                raise self.error(
                    f"duplicate policy name {policy.name!r} "
                    f"(first defined on line {first_line[policy.name]})",
                    item,
                    f"policies[{i}].name",
                )
            first_line[policy.name] = item.start_mark.line + 1
            result.append(policy)
        return result

    def policy(self, node: yaml.Node, where: str) -> DomainRule:
        fields = self.mapping(node, where, _POLICY_KEYS)
        if "name" not in fields:
            raise self.error("missing required key 'name'", node, f"{where}.name")
        name = self.string(fields["name"][1], f"{where}.name")
        if name == ALL:
            raise self.error(f"the name {ALL!r} is reserved for the every-policy rate", fields["name"][1],
                             f"{where}.name")
        if not _NAME_RE.match(name):
            raise self.error(
                f"invalid name {name!r}: use letters, digits, '_', '.' or '-', starting with a letter",
                fields["name"][1],
                f"{where}.name",
            )
        description = ""
        if "description" in fields:
            description = self.string(fields["description"][1], f"{where}.description")
        ignore_case = False
        if "ignore_case" in fields:
            ignore_case = self.boolean(fields["ignore_case"][1], f"{where}.ignore_case")
        flags = re.IGNORECASE if ignore_case else 0
        must = self.patterns(fields.get("must_match"), f"{where}.must_match", flags)
        must_not = self.patterns(fields.get("must_not_match"), f"{where}.must_not_match", flags)
        if not must and not must_not:
            raise self.error(
                "policy checks nothing: give at least one pattern in 'must_match' or 'must_not_match'",
                node,
                where,
            )
        return DomainRule(name=name, description=description, must_match=must, must_not_match=must_not)

    def mapping(
        self, node: yaml.Node, where: str | None, allowed: tuple[str, ...]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key -> (key node, value node); rejects non-mappings, non-string, unknown and duplicate keys."""
        if not isinstance(node, yaml.MappingNode):
            expected = "a mapping with a 'policies:' key" if where is None else "a mapping of policy keys"
            raise self.error(f"expected {expected}, got {_kind(node)}", node, where)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _TAG_STR:
                raise self.error(f"keys must be strings, got {_kind(key_node)}", key_node, where)
            key = key_node.value
            field = key if where is None else f"{where}.{key}"
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    f"unknown key {key!r}{hint} (valid keys: {', '.join(allowed)})", key_node, field
                )
            if key in out:
                raise self.error(f"duplicate key {key!r}", key_node, field)
            out[key] = (key_node, value_node)
        return out

    def string(self, node: yaml.Node, field: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _TAG_STR:
            raise self.error(f"expected a string, got {_kind(node)} (quote it)", node, field)
        if not node.value.strip():
            raise self.error("must not be empty", node, field)
        return node.value

    def boolean(self, node: yaml.Node, field: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _TAG_BOOL:
            raise self.error(f"expected true or false, got {_kind(node)}", node, field)
        return node.value.lower() in ("true", "yes", "on")

    def patterns(
        self, pair: tuple[yaml.Node, yaml.Node] | None, field: str, flags: int
    ) -> tuple[re.Pattern[str], ...]:
        """Compile a list of regexes; an absent or null list means no patterns."""
        if pair is None:
            return ()
        node = pair[1]
        if isinstance(node, yaml.ScalarNode) and node.tag == _TAG_NULL:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(
                f"expected a list of regex strings, got {_kind(node)} (write ['...'] for one pattern)",
                node,
                field,
            )
        compiled = []
        for j, item in enumerate(node.value):
            source = self.string(item, f"{field}[{j}]")
            try:
                compiled.append(re.compile(source, flags))
            except re.error as exc:
                message = f"invalid regular expression {source!r}: {exc}"
                raise self.error(message, item, f"{field}[{j}]") from None
        return tuple(compiled)


def _kind(node: yaml.Node) -> str:
    """Name a node's type in user words, for 'expected X, got Y' messages."""
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return _TAG_KINDS.get(node.tag, f"a value tagged {node.tag}")
