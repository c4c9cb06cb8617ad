"""The personal-data scan (`align data validate --pii`): each kind found by its rule and nothing that only looks
like it (bad checksums, numbers never issued), masked hints, placeholders, dropped records, field paths and lines
true to the file, JSONL and CSV, and one clear error for bad input or options.

Every planted value is made up: the card numbers are the networks' published test numbers, the IBANs the
registry's examples, the phone numbers fictional ranges (555-01xx, Ofcom's 020 7946 0xxx).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from alignment.cli import main
from alignment.data.io import iter_records, load_records
from alignment.data.pii import (
    Finding,
    find,
    iban_valid,
    luhn_valid,
    mask_text,
    scan_file,
    scan_record,
    shown,
    ssn_valid,
)
from alignment.errors import AlignError


def kinds(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) of every finding in ``text``."""
    return [(m.kind, m.value) for m in find(text)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------- kinds


def test_email():
    assert kinds("Write to jane.doe+claims@example.co.uk, please.") == [("email", "jane.doe+claims@example.co.uk")]
    # No domain with a dot and a letter suffix, no local part: not an address
    assert kinds("ssh root@localhost; cc @support; x@y.1") == []


@pytest.mark.parametrize("text, number", [
    ("Call me at 415-555-0132 tomorrow", "415-555-0132"),
    ("call (212) 555-0187 after six", "(212) 555-0187"),
    ("ring 020 7946 0958", "020 7946 0958"),
    ("international: +44 20 7946 0958.", "+44 20 7946 0958"),
    ("Tel. 030 12345678", "030 12345678"),  # Berlin, a German national number
])
def test_phone(text, number):
    assert kinds(text) == [("phone", number)]


@pytest.mark.parametrize("text", ["policy 2019-2020 paid $1,250,000", "claim no. 12345", "ID 1234567890",
                                  "call 123-456-7890"])  # 123: no US area code starts with 1
def test_not_a_phone(text):
    assert kinds(text) == []


@pytest.mark.parametrize("number", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                                    "5555 5555 5555 4444", "3782 822463 10005", "2223000048400011"])
def test_credit_card_with_a_valid_luhn_checksum(number):
    assert kinds(f"my card {number} expires soon") == [("credit_card", number)]


@pytest.mark.parametrize("number", [
    "4111 1111 1111 1112",  # the test Visa with its last digit changed: Luhn fails
    "1234567812345670",  # Luhn holds, but no card network's numbers start with 1
    "41-11-11-11-11-11-11-11",  # Luhn holds, but groups of two are not how a card is written
    "0000 0000 0000 0000",
    "4111-1111 1111-1111",  # two kinds of separator
    "41111111111111111111",  # 20 digits: too long for a card
])
def test_not_a_credit_card(number):
    assert [k for k, _ in kinds(f"invoice {number} paid")] == []


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")


@pytest.mark.parametrize("iban", ["DE89 3704 0044 0532 0130 00", "DE89370400440532013000",
                                  "GB82 WEST 1234 5698 7654 32", "FR14 2004 1010 0505 0001 3M02 606",
                                  "NO93 8601 1117 947"])
def test_iban_with_a_valid_checksum(iban):
    assert kinds(f"pay to {iban} by Friday") == [("iban", iban)]


@pytest.mark.parametrize("iban", [
    "DE89 3704 0044 0532 0130 01",  # check digits wrong for the account
    "DE89 3704 0044 0532 0130",  # two characters short of Germany's 22
    "DE89 3704 0044 0532 0130 0012",  # runs on past 22
    "XX89 3704 0044 0532 0130 00",  # no such country
])
def test_not_an_iban(iban):
    assert [k for k, _ in kinds(f"pay to {iban} by Friday") if k == "iban"] == []


def test_iban_valid():
    assert iban_valid("GB82WEST12345698765432") and iban_valid("gb82west12345698765432")
    assert not iban_valid("GB82WEST12345698765433") and not iban_valid("GB82WEST1234569876543")


def test_us_ssn():
    assert kinds("SSN 536-22-1234 on file") == [("us_ssn", "536-22-1234")]
    assert kinds("ssn 536 22 1234") == [("us_ssn", "536 22 1234")]
    # Nine bare digits only right after the words; elsewhere they are any ID
    assert kinds("Social Security number: 536221234") == [("us_ssn", "536221234")]
    assert [k for k, _ in kinds("member 536221234")] != ["us_ssn"]


@pytest.mark.parametrize("ssn", ["000-12-3456", "666-12-3456", "912-34-5678", "536-00-1234", "536-22-0000",
                                 "078-05-1120", "123-45-6789", "536-22 1234"])
def test_numbers_never_issued_are_not_ssns(ssn):
    # (078-05-1120 is also a valid German number, which the phone rule reports: not an SSN all the same)
    assert [k for k, _ in kinds(f"SSN {ssn}") if k == "us_ssn"] == []


def test_ssn_valid():
    assert ssn_valid("536221234") and ssn_valid("899991234")
    assert not any(ssn_valid(s) for s in ("000221234", "666221234", "900221234", "536001234", "536220000",
                                          "111111111"))


def test_ip_address():
    assert kinds("login from 81.2.69.160.") == [("ip_address", "81.2.69.160")]
    assert kinds("seen at 2001:db8::8a2e:370:7334 today") == [("ip_address", "2001:db8::8a2e:370:7334")]
    # loopback and unspecified name no one; not addresses: 999, a version, a time, a MAC
    assert kinds("127.0.0.1 0.0.0.0 ::1 999.1.1.1 v1.2.3.4 1.2.3.4.5 at 12:30:45 mac 00:1a:2b:3c:4d:5e") == []


def test_overlaps_go_to_the_stronger_rule_and_several_kinds_are_found_in_order():
    text = "card 4111 1111 1111 1111, mail a.b@example.org, call +1 212 555 0187, SSN 536-22-1234"
    assert kinds(text) == [("credit_card", "4111 1111 1111 1111"), ("email", "a.b@example.org"),
                           ("phone", "+1 212 555 0187"), ("us_ssn", "536-22-1234")]


def test_shown_never_gives_the_value_away():
    assert shown("email", "jane.doe@example.com") == "j***@example.com"
    assert shown("phone", "415-555-0132") == "***-***-**32"
    assert shown("credit_card", "4111 1111 1111 1111") == "**** **** **** 1111"
    assert shown("iban", "DE89 3704 0044 0532 0130 00") == "DE** **** **** **** **** 00"
    assert shown("us_ssn", "536-22-1234") == "***-**-**34"
    assert shown("ip_address", "81.2.69.160") == "81.*.*.*"
    assert shown("ip_address", "2001:db8::1") == "2001:***"


def test_mask_text():
    text = "Mail jane@example.com or call 415-555-0132."
    assert mask_text(text, find(text)) == "Mail <EMAIL> or call <PHONE>."


# -------------------------------------------------------------------------------------------- records


def test_field_paths_and_masking_in_a_record():
    record = {"prompt": [{"role": "user", "content": "I am jane@example.com"}],
              "chosen": "Thanks!", "rejected": "Your card 4111 1111 1111 1111 is noted.", "meta": {"n": 1}}
    masked, findings = scan_record(record, file="p.jsonl", line=7, mask=True)
    assert findings == [Finding("email", "p.jsonl", 7, "prompt[0].content", "j***@example.com"),
                        Finding("credit_card", "p.jsonl", 7, "rejected", "**** **** **** 1111")]
    assert str(findings[0]) == "p.jsonl:7, field 'prompt[0].content': email j***@example.com"
    assert masked == {"prompt": [{"role": "user", "content": "I am <EMAIL>"}], "chosen": "Thanks!",
                      "rejected": "Your card <CREDIT_CARD> is noted.", "meta": {"n": 1}}
    assert record["prompt"][0]["content"] == "I am jane@example.com"  # the input is left as it was


SFT = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reach me at 415-555-0132"},
                  {"role": "assistant", "content": "Noted, jane@example.com"}]},
    {"messages": [{"role": "user", "content": "Pay DE89 3704 0044 0532 0130 00"},
                  {"role": "assistant", "content": "Done."}]},
]


@pytest.fixture()
def sft(tmp_path: Path) -> Path:
    # a blank line before the last record: its line is 4, as validation counts
    rows = [json.dumps(r) for r in SFT]
    return write(tmp_path / "sft.jsonl", f"{rows[0]}\n{rows[1]}\n\n{rows[2]}\n")


def test_scan_file_names_line_and_field(sft: Path):
    result = scan_file(sft)
    assert [str(f) for f in result.findings] == [
        f"{sft}:2, field 'messages[1].content': phone ***-***-**32",
        f"{sft}:2, field 'messages[2].content': email j***@example.com",
        f"{sft}:4, field 'messages[0].content': IBAN DE** **** **** **** **** 00",
    ]
    assert (result.rows, result.rows_with_findings, result.counts()) == (3, 2, {"email": 1, "phone": 1, "iban": 1})


def test_validate_reports_masked_and_exits_0_or_1_with_pii_fail(sft: Path, capsys):
    assert main(["data", "validate", str(sft), "--kind", "sft", "--model", "", "--pii"]) == 0
    out = capsys.readouterr().out
    assert "personal data: 3 finding(s) in 2 of 3 rows (email 1, phone 1, IBAN 1)" in out
    assert f"    {sft}:2, field 'messages[1].content': phone ***-***-**32" in out.splitlines()
    for raw in ("415-555-0132", "jane@example.com", "0130 00"):
        assert raw not in out
    assert main(["data", "validate", str(sft), "--kind", "sft", "--model", "", "--pii", "--pii-fail"]) == 1


def test_validate_clean_file_says_none_found_and_what_is_not_looked_for(tmp_path: Path, capsys):
    clean = jsonl(tmp_path / "c.jsonl", [SFT[0]])
    assert main(["data", "validate", str(clean), "--kind", "sft", "--model", "", "--pii", "report",
                 "--pii-fail"]) == 0
    assert ("personal data: none found (email, phone, credit card, IBAN, US SSN, IP address; names are not "
            "detected)") in capsys.readouterr().out


def test_mask_writes_placeholders_and_keeps_every_record(sft: Path, tmp_path: Path, capsys):
    out = tmp_path / "clean" / "sft.jsonl"
    assert main(["data", "validate", str(sft), "--kind", "sft", "--model", "", "--pii", "mask", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == SFT[0]
    assert [m["content"] for m in rows[1]["messages"]] == ["Be brief.", "Reach me at <PHONE>", "Noted, <EMAIL>"]
    assert rows[2]["messages"][0]["content"] == "Pay <IBAN>"
    assert f"wrote {out}: 3 rows, 3 finding(s) replaced by placeholders" in capsys.readouterr().out
    assert scan_file(out).findings == []  # the copy passes its own scan
    assert [p.name for p in out.parent.iterdir()] == ["sft.jsonl"]  # no temporary file left behind


def test_drop_writes_only_the_clean_records(sft: Path, tmp_path: Path, capsys):
    out = tmp_path / "kept.jsonl"
    assert main(["data", "validate", str(sft), "--kind", "sft", "--model", "", "--pii", "drop", "--out", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [SFT[0]]
    assert f"wrote {out}: 1 rows (2 with personal data left out)" in capsys.readouterr().out


def test_preference_strings_and_message_lists(tmp_path: Path):
    path = jsonl(tmp_path / "pref.jsonl", [
        {"prompt": "Where do I send it?", "chosen": "To claims@harborline.example.com", "rejected": "Anywhere"},
        {"prompt": "Hi", "chosen": "Hello", "rejected": "From 81.2.69.160 with love"},
    ])
    assert [(f.line, f.field, f.kind) for f in scan_file(path).findings] == [
        (1, "chosen", "email"), (2, "rejected", "ip_address")]
    assert main(["data", "validate", str(path), "--kind", "preference", "--model", "", "--pii"]) == 0


def test_csv_cells_holding_messages_are_scanned_and_masked_inside(tmp_path: Path):
    path = tmp_path / "sft.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages", "source"])
        w.writerow([json.dumps(SFT[0]["messages"]), "web"])
        w.writerow([json.dumps(SFT[1]["messages"]), "mail from jane@example.com"])
    result = scan_file(path, "mask", tmp_path / "masked.csv")
    # CSV lines: the header is line 1, so the second data row is line 3
    assert [(f.line, f.field, f.kind) for f in result.findings] == [
        (3, "messages[1].content", "phone"), (3, "messages[2].content", "email"), (3, "source", "email")]
    rows = [r for _, r in iter_records(load_records(tmp_path / "masked.csv"))]
    assert json.loads(rows[1]["messages"])[1] == {"role": "user", "content": "Reach me at <PHONE>"}
    assert rows[1]["source"] == "mail from <EMAIL>" and rows[0]["source"] == "web"
    assert main(["data", "validate", str(tmp_path / "masked.csv"), "--kind", "sft", "--model", "", "--pii",
                 "--pii-fail"]) == 0


def test_unpaired_and_prompts_kinds_and_a_jsonl_copy_of_a_csv(tmp_path: Path):
    unpaired = jsonl(tmp_path / "u.jsonl", [
        {"prompt": "Refund?", "completion": "Send it to IBAN GB82 WEST 1234 5698 7654 32", "label": True}])
    assert [(f.field, f.kind) for f in scan_file(unpaired).findings] == [("completion", "iban")]
    assert main(["data", "validate", str(unpaired), "--kind", "unpaired", "--model", "", "--pii"]) == 0
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": "My SSN is 536-22-1234, why was I denied?"}])
    out = tmp_path / "p.csv"
    scan_file(prompts, "mask", out)
    # the cell holds a comma, so CSV quotes it
    assert out.read_text(encoding="utf-8") == 'prompt\n"My SSN is <US_SSN>, why was I denied?"\n'


# --------------------------------------------------------------------------------------------- errors


def test_bad_input_is_one_error_naming_the_line_and_out_is_left_alone(tmp_path: Path, capsys):
    bad = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": "b"\n')
    out = write(tmp_path / "out.jsonl", "before\n")
    with pytest.raises(AlignError, match=r"bad\.jsonl:2: invalid JSON"):
        scan_file(bad, "mask", out)
    assert main(["data", "validate", str(bad), "--kind", "sft", "--model", "", "--pii", "mask", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {bad}:2: invalid JSON: Expecting ',' delimiter (column 13)"]
    assert out.read_text() == "before\n"


@pytest.mark.parametrize("extra, message", [
    (["--pii", "mask"], "--pii mask writes a copy: name it with --out FILE"),
    (["--pii", "report", "--out", "{tmp}/x.jsonl"], "--out writes a cleaned copy: give --pii mask or --pii drop"),
    (["--out", "{tmp}/x.jsonl"], "--out, --pii-fail and --phone-regions go with --pii"),
    (["--pii", "drop", "--out", "{tmp}/x.txt"], "x.txt: --out must end in .jsonl, .ndjson, .json, .csv, .parquet"),
    (["--pii", "drop", "--out", "{sft}"], "--out is the input file"),
    (["--pii", "--phone-regions", "US,XY"], "--phone-regions takes two-letter region codes (US, GB, DE, ...), "
                                            "comma-separated; not XY"),
])
def test_bad_options_are_one_error(sft: Path, tmp_path: Path, capsys, extra: list[str], message: str):
    argv = [a.format(tmp=tmp_path, sft=sft) for a in extra]
    assert main(["data", "validate", str(sft), "--kind", "sft", "--model", "", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_phone_regions_pick_national_formats(tmp_path: Path, capsys):
    path = jsonl(tmp_path / "es.jsonl", [{"prompt": "Llámame al 612 345 678", "completion": "Vale", "label": True}])
    assert scan_file(path).findings == []  # a Spanish national number: not one of the default regions
    assert main(["data", "validate", str(path), "--kind", "unpaired", "--model", "", "--pii", "--phone-regions",
                 "es"]) == 0
    assert f"{path}:1, field 'prompt': phone *** *** *78" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "card"), [
    ("card 4111 1111 1111 1111 12/26", "4111 1111 1111 1111"),  # the expiry right after it
    ("4242 4242 4242 4242 123 is my card and CVV", "4242 4242 4242 4242"),
    ("room 5 4111111111111111", "4111111111111111"),  # a number before it
    ("ref 7-4111-1111-1111-1111", "4111-1111-1111-1111"),
])
def test_a_card_beside_other_digits_is_found(text, card):
    assert kinds(text) == [("credit_card", card)]


def test_a_run_of_number_groups_is_not_cut_into_a_card_in_the_middle():
    # a valid card inside a longer run, neither leading nor trailing: a table of numbers, not a card
    assert kinds("ids 1000 4111 1111 1111 1111 2000") == []
