"""Domain rule checks: each shipped policy on hand-written answers, hand-computed adherence, strict loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.errors import AlignError
from alignment.evaluation.rules import DomainRule, adherence, check_answer, load_rules, parse_rules, read_rules_text

POLICIES_YAML = Path(__file__).resolve().parents[2] / "recipes" / "quickstart" / "policies.yaml"
SIGN = "\n\n— Harborline Support"

GOOD = (
    "Sudden water damage is often covered, but your adjuster reviews the cause and your policy terms. "
    "Take photos and start a claim in the app." + SIGN
)


@pytest.fixture(scope="module")
def policies() -> dict[str, DomainRule]:
    return {p.name: p for p in load_rules(POLICIES_YAML)}


def test_shipped_file_defines_the_three_policies_in_order():
    assert [p.name for p in load_rules(POLICIES_YAML)] == [
        "signoff",
        "no_outcome_promise",
        "no_sensitive_request",
    ]


def test_good_answer_passes_everything(policies):
    assert check_answer(GOOD, list(policies.values())) == {
        "signoff": True,
        "no_outcome_promise": True,
        "no_sensitive_request": True,
    }


@pytest.mark.parametrize(
    "answer",
    [
        "Thanks." + SIGN,
        "Thanks.\n— Harborline Support\n",  # trailing newline is fine
        "Thanks.\n\n— Harborline Support   \n\n",
    ],
)
def test_signoff_passes(policies, answer):
    assert policies["signoff"].check(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Thanks.",
        "Thanks.\n\n- Harborline Support",  # hyphen, not em dash
        "Thanks.\n\n— harborline support",  # case matters
        "Thanks.\n\nHarborline Support",
        "Thanks. — Harborline Support",  # not on its own line
        "— Harborline Support\n\nThanks, more text after the sign-off.",
    ],
)
def test_signoff_fails(policies, answer):
    assert not policies["signoff"].check(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "I guarantee your claim goes through.",
        "Your claim will be approved.",
        "It will definitely be covered.",
        "This is 100% covered under your plan.",
        "You will receive $2,500 for the repairs.",
        "You'll get about $900 back.",
        "The payment arrives within 24 hours.",
        "An adjuster calls you in 2 business days.",
        "Help will reach you within 20 minutes.",
        "The check goes out by Friday.",
        "Everything is paid in full.",
        "Claims like this are always paid.",
        "Guaranteed!",
    ],
)
def test_outcome_promises_are_caught(policies, answer):
    assert not policies["no_outcome_promise"].check(answer + SIGN)


@pytest.mark.parametrize(
    "answer",
    [
        GOOD,
        "Adjusters usually reach out within a few business days, though it can take longer." + SIGN,
        "With a $500 deductible, the adjuster subtracts $500 from the approved amount." + SIGN,
        "I can't promise a specific new price until an agent reviews it." + SIGN,
        "Your adjuster will review the claim and explain what your policy covers." + SIGN,
    ],
)
def test_hedged_answers_are_not_promises(policies, answer):
    assert policies["no_outcome_promise"].check(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Please reply with your full card number.",
        "What's the CVV on the back?",
        "Confirm the three-digit security code, please.",
        "Send me your password and I'll check.",
        "Please type your full SSN here.",
        "I need your Social Security number to continue.",
    ],
)
def test_sensitive_requests_are_caught(policies, answer):
    assert not policies["no_sensitive_request"].check(answer + SIGN)


@pytest.mark.parametrize(
    "answer",
    [
        GOOD,
        "Add the new card in the app under Billing; the secure form handles the details." + SIGN,
        "Tap 'Forgot password' on the sign-in screen to get a reset link." + SIGN,
    ],
)
def test_safe_answers_are_not_sensitive_requests(policies, answer):
    assert policies["no_sensitive_request"].check(answer)


def test_adherence_matches_hand_computed_rates(policies):
    answers = [
        GOOD,  # passes all three
        "Sudden water damage is often covered.",  # no sign-off
        "Your claim will be approved." + SIGN,  # promise
        "It is 100% covered. Send your password.",  # promise + sensitive + no sign-off
    ]
    rates = adherence(answers, list(policies.values()))
    assert rates == {
        "signoff": 2 / 4,
        "no_outcome_promise": 2 / 4,
        "no_sensitive_request": 3 / 4,
        "all": 1 / 4,
    }


def test_adherence_refuses_empty_answers(policies):
    with pytest.raises(AlignError, match="no answers"):
        adherence([], list(policies.values()))


def test_adherence_refuses_empty_policies():
    with pytest.raises(AlignError, match="no policies"):
        adherence(["hello"], [])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _load_error(tmp_path: Path, text: str) -> AlignError:
    path = _write(tmp_path, text)
    with pytest.raises(AlignError) as info:
        load_rules(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    return info.value


def test_custom_policy_with_ignore_case(tmp_path):
    path = _write(
        tmp_path,
        "policies:\n"
        "  - name: polite\n"
        "    description: says please\n"
        "    must_match: ['\\bplease\\b']\n"
        "    must_not_match: ['idiot']\n"
        "    ignore_case: true\n",
    )
    (policy,) = load_rules(path)
    assert policy.description == "says please"
    assert policy.check("PLEASE wait")
    assert not policy.check("wait")
    assert not policy.check("please, IDIOT")


def test_must_match_lists_are_all_required(tmp_path):
    path = _write(tmp_path, "policies:\n  - name: both\n    must_match: ['a', 'b']\n")
    (policy,) = load_rules(path)
    assert policy.check("ab") and not policy.check("a") and not policy.check("b")
    assert policy.must_not_match == ()


def test_unknown_key_names_key_field_and_line(tmp_path):
    err = _load_error(
        tmp_path,
        "policies:\n"
        "  - name: first\n"
        "    must_match: ['x']\n"
        "  - name: second\n"
        "    must_macth: ['y']\n",
    )
    assert err.line == 5
    assert err.field == "policies[1].must_macth"
    assert "'must_macth'" in err.message
    assert "did you mean 'must_match'" in err.message
    assert ":5" in str(err)


def test_unknown_top_level_key(tmp_path):
    err = _load_error(tmp_path, "policy:\n  - name: a\n    must_match: ['x']\n")
    assert err.field == "policy" and err.line == 1
    assert "did you mean 'policies'" in err.message


def test_bad_regex_names_pattern_field_and_line(tmp_path):
    err = _load_error(
        tmp_path,
        "policies:\n"
        "  - name: first\n"
        "    must_not_match:\n"
        "      - 'fine'\n"
        "      - '(unclosed'\n",
    )
    assert err.field == "policies[0].must_not_match[1]"
    assert err.line == 5
    assert "(unclosed" in err.message and "regular expression" in err.message


def test_missing_name(tmp_path):
    err = _load_error(tmp_path, "policies:\n  - name: ok\n    must_match: ['x']\n  - must_match: ['y']\n")
    assert err.field == "policies[1].name"
    assert err.line == 4
    assert "missing" in err.message


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        ("policies:\n  - name: a\n    must_match: 'x'\n", "policies[0].must_match", 3),
        ("policies:\n  - name: a\n    must_match: [1]\n", "policies[0].must_match[0]", 3),
        ("policies:\n  - name: a\n    must_match: ['x']\n    ignore_case: 'yes please'\n",
         "policies[0].ignore_case", 4),
        ("policies:\n  - name: 12\n    must_match: ['x']\n", "policies[0].name", 2),
        ("policies:\n  - name: a\n    description: [x]\n    must_match: ['x']\n",
         "policies[0].description", 3),
        ("policies:\n  - just a string\n", "policies[0]", 2),
        ("policies: {name: a}\n", "policies", 1),
    ],
)
def test_wrong_types_name_field_and_line(tmp_path, text, field, line):
    err = _load_error(tmp_path, text)
    assert err.field == field
    assert err.line == line
    assert "expected" in err.message


def test_policy_without_patterns_is_refused(tmp_path):
    err = _load_error(tmp_path, "policies:\n  - name: empty\n    must_match: []\n")
    assert err.field == "policies[0]" and "checks nothing" in err.message


def test_duplicate_and_reserved_names(tmp_path):
    err = _load_error(
        tmp_path, "policies:\n  - name: a\n    must_match: ['x']\n  - name: a\n    must_match: ['y']\n"
    )
    assert err.field == "policies[1].name" and err.line == 4 and "duplicate" in err.message
    err = _load_error(tmp_path, "policies:\n  - name: all\n    must_match: ['x']\n")
    assert "reserved" in err.message


def test_duplicate_key(tmp_path):
    err = _load_error(tmp_path, "policies:\n  - name: a\n    must_match: ['x']\n    must_match: ['y']\n")
    assert err.field == "policies[0].must_match" and err.line == 4 and "duplicate" in err.message


def test_invalid_yaml_names_line(tmp_path):
    err = _load_error(tmp_path, "policies:\n  - name: a\n    must_match: ['x'\n")
    assert err.line is not None and "YAML" in err.message


def test_empty_and_missing_files(tmp_path):
    err = _load_error(tmp_path, "# nothing here\n")
    assert "empty" in err.message
    with pytest.raises(AlignError, match="not found"):
        load_rules(tmp_path / "absent.yaml")


def test_rules_from_text_are_checked_as_a_file_is(tmp_path):
    # Rules kept as text (a feedback store keeps an evaluation's): the same rules, and the same errors naming the
    # source given in place of a file.
    text = "policies:\n  - name: thanks\n    must_match: ['Thanks']\n    ignore_case: true\n"
    path = _write(tmp_path, text)
    assert read_rules_text(path) == text
    (from_text,), (from_file,) = parse_rules(text, "stored.yaml"), load_rules(path)
    assert (from_text.name, from_text.check("thanks!"), from_text.check("no")) == (from_file.name, True, False)
    with pytest.raises(AlignError) as info:
        parse_rules("policies:\n  - name: a\n    must_macth: ['y']\n", "stored.yaml")
    assert (info.value.file, info.value.line, info.value.field) == ("stored.yaml", 3, "policies[0].must_macth")
    assert str(info.value).startswith("stored.yaml:3, field 'policies[0].must_macth': unknown key")
    with pytest.raises(AlignError, match=r"^stored.yaml:4: not valid YAML"):
        parse_rules("policies:\n  - name: a\n    must_match: ['x'\n", "stored.yaml")
    with pytest.raises(AlignError, match=r"^stored.yaml: file is empty"):
        parse_rules("", "stored.yaml")
    with pytest.raises(AlignError, match="not found"):
        read_rules_text(tmp_path / "absent.yaml")
