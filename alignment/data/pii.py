"""Personal data in data files and feedback exports: find it, report it (masked), mask it or drop its records.

What is found (:data:`KINDS`), each by a rule that must pass more than a pattern, so that an order number is not
a card and a version string is not an address:

- ``email``: ``local@domain.tld`` (a dotted domain ending in letters);
- ``phone``: Google's libphonenumber rules through :mod:`phonenumbers` (``Leniency.VALID``: the number must be
  a valid number of its region, not merely digits), international numbers (``+44 ...``) from anywhere and national
  ones of :data:`DEFAULT_PHONE_REGIONS`;
- ``credit_card``: 13 to 19 digits (groups of 3 to 6 when separated by one kind of space or dash) starting like a
  card network's numbers (2221-2720, 3, 4, 5, 6) whose Luhn checksum holds: a 16-digit invoice number with a bad
  checksum is not a card;
- ``iban``: a country code, two check digits and exactly that country's IBAN length (:data:`IBAN_LENGTHS`, the
  SWIFT registry), mod-97 checksum = 1;
- ``us_ssn``: ``AAA-GG-SSSS`` (dashes or spaces), or nine bare digits right after "SSN" / "social security",
  without the numbers the SSA never issues (area 000, 666, 900-999; group 00; serial 0000) and the published
  sample numbers;
- ``ip_address``: IPv4 and IPv6 addresses that :mod:`ipaddress` accepts, less loopback and unspecified
  (127.0.0.1, ::1, 0.0.0.0: they name no one).

Not found: **names of people** (and postal addresses). A name is only recognisable from context, which needs a
named-entity model; spaCy's and the other NER models are downloaded from a model hub, not installed from PyPI, so
this scan cannot ship one, and a list of first names would flag "Grace" and "Will" and miss most names. Say so to
users rather than pretend.

Why not Presidio (``presidio-analyzer``, whose pattern recognizers the rules above follow), measured on this
project's machine for version 2.2.366: its recognizers do run without an NLP engine or spaCy model
(``CreditCardRecognizer().analyze(text, ["CREDIT_CARD"], nlp_artifacts=None)`` found the planted card, IBAN, SSN,
IP and phone), but importing any part of it imports spaCy (``presidio_analyzer/__init__`` loads its NLP engines),
a hard dependency: spaCy, thinc and blis are 54 MB of wheels and 183 MB installed, the import takes 0.8-1.3 s, and
the whole install (with phonenumbers, tldextract, numpy, ...) is 393 MB in 14 s from local wheels. It declares
``python >= 3.11`` (this project supports 3.10) and ``numpy < 2.5`` (a cap on this project's own numpy), and its
EmailRecognizer calls :mod:`tldextract`, which on first use fetches the public suffix list from GitHub (here the
request failed, logged a traceback and fell back to its bundled copy). That is a lot for regexes and checksums.
So this module uses the maintained piece that carries real knowledge, ``phonenumbers`` (which Presidio's
PhoneRecognizer itself wraps; pure Python, no dependencies, a 2.6 MB wheel and 48 MB installed with its metadata),
and writes the checksum rules itself, a few lines each.

A field is named as validation names it: ``messages[2].content``, ``chosen``, ``prompt[0].content``. A CSV cell
that holds JSON (a message list) is scanned inside, and masked inside. A finding never carries the personal data
whole: :attr:`Finding.shown` keeps a hint (``j***@example.com``, ``**** **** **** 1111``) to find it by.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.errors import AlignError
from alignment.files import atomic_write

KINDS = ("email", "phone", "credit_card", "iban", "us_ssn", "ip_address")
LABELS = {"email": "email", "phone": "phone", "credit_card": "credit card", "iban": "IBAN", "us_ssn": "US SSN",
          "ip_address": "IP address"}
PLACEHOLDERS = {kind: f"<{kind.upper()}>" for kind in KINDS}
ACTIONS = ("report", "mask", "drop")
# National formats are read as these regions' numbers; an international number (+CC ...) is found whatever the
# region. India is left out: its national plan accepts most ten-digit runs (an ID "1234567890" is a valid number).
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR")

# When two rules claim overlapping text the earlier kind wins: a checksum-verified or structurally unambiguous
# match over a phone number that libphonenumber would also accept (a card's digits, digits inside an address).
_PRIORITY = {kind: i for i, kind in enumerate(("email", "iban", "credit_card", "us_ssn", "ip_address", "phone"))}

# IBAN length per country, from the SWIFT IBAN registry.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9_%+-](?:[A-Za-z0-9_.%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
# Digit groups with single spaces or dashes between them; the rule checks the groups and the checksum of the
# whole run, then of its leading and trailing groups (a card followed by its expiry or CVV, or after a number).
_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")
_DIGITS = re.compile(r"\d+")
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}")
_SSN = re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")
_SSN_BARE = re.compile(r"(?<!\d)\d{9}(?!\d)")
_SSN_CONTEXT = re.compile(r"\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)\W{0,4}$", re.IGNORECASE)
# Sample numbers printed in ads and examples (the Woolworth wallet card, the SSA's pamphlet, the usual 123-45-6789).
_SSN_SAMPLES = {"078051120", "219099999", "123456789"}
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f.:]*:[0-9A-Fa-f.]*:)[0-9A-Fa-f:.]{3,45}(?![\w:])")
# Cheap gates before the slower rules: phone numbers need seven digits close together.
_SEVEN_DIGITS = re.compile(r"\d(?:\D{0,3}\d){6}")


@dataclass(frozen=True)
class Match:
    """One piece of personal data in a text: ``text[start:end]``."""

    kind: str
    start: int
    end: int
    value: str  # the matched text itself: for masking, never to be printed

    @property
    def shown(self) -> str:
        return shown(self.kind, self.value)


@dataclass(frozen=True)
class Finding:
    """Where one piece of personal data is: file, line (JSONL: the line in the file; CSV: the row's first line;
    a JSON array, Parquet, a saved dataset: the 1-based record), field, and a masked hint of it."""

    kind: str
    file: str
    line: int
    field: str
    shown: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}, field '{self.field}': {LABELS[self.kind]} {self.shown}"


# --------------------------------------------------------------------------------------------- rules


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a digit string holds (every card number's last digit makes it hold)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """``iban`` (no spaces) has its country's length and a mod-97 remainder of 1 (ISO 13616)."""
    iban = iban.upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ssn_valid(digits: str) -> bool:
    """Nine digits the SSA could have issued: not area 000, 666 or 9xx, group 00 or serial 0000, nor a sample."""
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (len(digits) == 9 and area not in ("000", "666") and area[0] != "9" and group != "00"
            and serial != "0000" and digits not in _SSN_SAMPLES and len(set(digits)) > 1)


def _card(text: str) -> bool:
    separators = {c for c in text if not c.isdigit()}
    if len(separators) > 1:
        return False
    if separators and not all(3 <= len(g) <= 6 for g in re.split(r"[ -]", text)):
        return False  # "1 2 3 4 ..." or "12-34-56-..." are not how a card is written
    digits = re.sub(r"\D", "", text)
    if not 13 <= len(digits) <= 19:
        return False
    network = digits[0] in "3456" or 2221 <= int(digits[:4]) <= 2720
    return network and len(set(digits)) > 1 and luhn_valid(digits)


def _cards(text: str) -> Iterator[tuple[int, int]]:
    """Spans of card numbers: a run of digit groups when it is one, else its longest leading or trailing groups
    that are ("4111 1111 1111 1111 12/26", "CVV follows: 4242 4242 4242 4242 123", "room 5 4111111111111111").
    A single group is never cut: 20 digits in a row are not a card."""
    for run in _DIGIT_RUN.finditer(text):
        groups = [(run.start() + g.start(), run.start() + g.end()) for g in _DIGITS.finditer(run.group())]
        n = len(groups)
        spans = [(0, n)] + [(0, j) for j in range(n - 1, 0, -1)] + [(i, n) for i in range(1, n)]
        for i, j in spans:
            start, end = groups[i][0], groups[j - 1][1]
            if _card(text[start:end]):
                yield start, end
                break


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    """Spans of valid IBANs: exactly the country's length in letters and digits, single spaces allowed between."""
    for m in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m.group()[:2].upper())
        if length is None:
            continue
        chars: list[str] = []
        j = m.start()
        while j < len(text) and len(chars) < length:
            c = text[j]
            if c.isascii() and c.isalnum():
                chars.append(c)
            elif not (c == " " and j + 1 < len(text) and text[j + 1].isalnum() and text[j - 1] != " "):
                break
            j += 1
        if len(chars) == length and not (j < len(text) and text[j].isascii() and text[j].isalnum()):
            if iban_valid("".join(chars)):
                yield m.start(), j


def _ip(candidate: str) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def _phones(text: str, regions: Sequence[str]) -> Iterator[tuple[int, int]]:
    try:
        import phonenumbers
    except ImportError:  # a dependency of alignment-loop; only a hand-made environment lacks it
        raise AlignError("the phone-number rule needs the phonenumbers package: pip install phonenumbers") from None
    seen = set()
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            if (m.start, m.end) not in seen:
                seen.add((m.start, m.end))
                yield m.start, m.end


def find(text: str, phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> list[Match]:
    """Every piece of personal data in ``text``, in order, overlaps resolved (see ``_PRIORITY``)."""
    found: list[Match] = []

    def add(kind: str, start: int, end: int) -> None:
        found.append(Match(kind, start, end, text[start:end]))

    if "@" in text:
        for m in _EMAIL.finditer(text):
            add("email", m.start(), m.end())
    if any(c.isdigit() for c in text):
        for start, end in _cards(text):
            add("credit_card", start, end)
        for start, end in _ibans(text):
            add("iban", start, end)
        for m in _SSN.finditer(text):
            if ssn_valid(m.group(1) + m.group(3) + m.group(4)):
                add("us_ssn", m.start(), m.end())
        for m in _SSN_BARE.finditer(text):
            if _SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()) and ssn_valid(m.group()):
                add("us_ssn", m.start(), m.end())
        if "." in text:
            for m in _IPV4.finditer(text):
                if _ip(m.group()):
                    add("ip_address", m.start(), m.end())
        if _SEVEN_DIGITS.search(text):
            for start, end in _phones(text, phone_regions):
                add("phone", start, end)
    if text.count(":") >= 2:
        for m in _IPV6.finditer(text):
            candidate = m.group().rstrip(".")  # a sentence's full stop after the address
            if _ip(candidate):
                add("ip_address", m.start(), m.start() + len(candidate))
    kept: list[Match] = []
    for match in sorted(found, key=lambda x: (_PRIORITY[x.kind], x.start, -x.end)):
        if all(match.end <= k.start or match.start >= k.end for k in kept):
            kept.append(match)
    return sorted(kept, key=lambda x: x.start)


def shown(kind: str, value: str) -> str:
    """A hint of ``value`` that does not give it away: an email's first letter and domain, a card's last four digits,
    a phone's or SSN's last two, an IBAN's country and last two characters, an IP address's first part."""
    if kind == "email":
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if kind == "ip_address":
        if ":" in value:
            return value.split(":", 1)[0] + ":***"
        return value.split(".", 1)[0] + ".*.*.*"
    keep_start = 2 if kind == "iban" else 0
    keep_end = 4 if kind == "credit_card" else 2
    positions = [i for i, c in enumerate(value) if c.isalnum()]
    hidden = set(positions[keep_start:len(positions) - keep_end])
    return "".join("*" if i in hidden else c for i, c in enumerate(value))


def mask_text(text: str, matches: Iterable[Match]) -> str:
    """``text`` with every match replaced by its kind's placeholder (``<EMAIL>``, ``<CREDIT_CARD>``, ...)."""
    out, at = [], 0
    for m in sorted(matches, key=lambda x: x.start):
        out += [text[at:m.start], PLACEHOLDERS[m.kind]]
        at = m.end
    out.append(text[at:])
    return "".join(out)


# ------------------------------------------------------------------------------------------- records


def scan_value(value: Any, path: str, *, json_cells: bool = False, mask: bool = False,
               phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> tuple[Any, list[tuple[str, Match]]]:
    """Scan every string inside ``value`` (at field ``path``); returns the value (masked when ``mask``, else as
    given) and (field, match) per finding. ``json_cells``: a string holding a JSON list or object (a CSV cell of
    messages) is scanned inside, and written back as JSON when masked."""
    found: list[tuple[str, Match]] = []

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, str):
            if json_cells and node.lstrip()[:1] in ("[", "{"):
                try:
                    parsed = json.loads(node)
                except ValueError:
                    parsed = None
                if isinstance(parsed, (list, dict)):
                    before = len(found)
                    new = walk(parsed, where)
                    return json.dumps(new, ensure_ascii=False) if mask and len(found) > before else node
            matches = find(node, phone_regions)
            found.extend((where, m) for m in matches)
            return mask_text(node, matches) if mask and matches else node
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(value, path), found


def scan_record(record: dict[str, Any], *, file: str, line: int, json_cells: bool = False, mask: bool = False,
                fields: Sequence[str] | None = None,
                phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> tuple[dict[str, Any], list[Finding]]:
    """Scan a record's string fields (``fields``, default every one); returns the record (masked when ``mask``)
    and its findings, each naming ``file``, ``line`` and the field path."""
    out = dict(record)
    findings = []
    for key in record if fields is None else [f for f in fields if f in record]:
        out[key], found = scan_value(record[key], key, json_cells=json_cells, mask=mask, phone_regions=phone_regions)
        findings += [Finding(m.kind, file, line, where, m.shown) for where, m in found]
    return out, findings


@dataclass
class Scan:
    """What :func:`scan_file` found, and what it wrote."""

    file: str
    rows: int = 0
    findings: list[Finding] = field(default_factory=list)
    rows_with_findings: int = 0
    action: str = "report"
    out: str | None = None
    rows_written: int = 0
    pairs_collapsed: int = 0  # mask: pairs left out because masking made chosen and rejected the same text

    def counts(self) -> dict[str, int]:
        """Findings per kind, in :data:`KINDS` order, kinds with none left out."""
        c = Counter(f.kind for f in self.findings)
        return {kind: c[kind] for kind in KINDS if c[kind]}


def count_line(counts: dict[str, int]) -> str:
    """``email 2, phone 1`` (or ``none``)."""
    return ", ".join(f"{LABELS[k]} {n}" for k, n in counts.items()) or "none"


def read_rows(path: str | Path) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """The records of a data file as written, with their lines, and whether cells may hold JSON (CSV).

    Text formats are parsed by :mod:`alignment.data.io`'s own readers, so line numbers and errors are the ones
    validation gives, and a record comes back exactly as written (a Dataset would add a null for every key another
    record has); Parquet and saved datasets come through :func:`~alignment.data.io.load_records`."""
    from alignment.data import io as data_io

    source = str(path)
    p = Path(source)
    suffix = p.suffix.lower()
    if p.is_file() and suffix in (*data_io.JSONL_SUFFIXES, ".json", ".csv"):
        text = data_io._read_text(p, source)
        if suffix == ".csv":
            rows = data_io._csv_rows(text, source)
        elif suffix == ".json":
            rows = data_io._json_rows(text, source)
        else:
            rows = data_io._jsonl_rows(text, source)
        if not rows:
            raise AlignError("empty file: no records", file=source)
        return rows, suffix == ".csv"
    return list(data_io.iter_records(data_io.load_records(source))), False


def collapsed(record: dict[str, Any], masked: dict[str, Any]) -> bool:
    """Whether masking made a pair's two answers the same text (two different e-mails both became <EMAIL>): the
    pair no longer prefers anything, and the preference loaders refuse it, so a masked copy leaves it out."""
    return ("chosen" in record and "rejected" in record and record["chosen"] != record["rejected"]
            and masked["chosen"] == masked["rejected"])


def scan_file(path: str | Path, action: str = "report", out: str | Path | None = None, *,
              phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> Scan:
    """Scan every record of a data file. ``report``: find only; ``mask``: write ``out``, a copy with every finding
    replaced by its placeholder; ``drop``: write ``out`` without the records that have a finding. ``out``'s suffix
    picks its format (.jsonl/.ndjson, .json, .csv, .parquet); it is written whole or not at all.

    Raises AlignError (file, line, field) for a file that cannot be read, and for a bad action or ``out``."""
    source = str(path)
    check_action(action, out, source)
    rows, json_cells = read_rows(source)
    result = Scan(file=source, rows=len(rows), action=action, out=None if out is None else str(out))
    kept = []
    for line, record in rows:
        masked, findings = scan_record(record, file=source, line=line, json_cells=json_cells,
                                       mask=action == "mask", phone_regions=phone_regions)
        result.findings += findings
        result.rows_with_findings += bool(findings)
        if action == "mask" and findings and collapsed(record, masked):
            result.pairs_collapsed += 1
            continue
        if action == "mask" or not findings:
            kept.append(masked)
    if out is not None:
        write_records(out, kept)
        result.rows_written = len(kept)
    return result


# -------------------------------------------------------------------------------------------- output


def check_action(action: str, out: str | Path | None, source: str | Path | None = None) -> None:
    """Refuse a bad combination before anything is read: an unknown action, ``report`` with an output, ``mask`` or
    ``drop`` without one, an output the writer cannot write or that is the input."""
    if action not in ACTIONS:
        raise AlignError(f"--pii must be one of {', '.join(ACTIONS)}, not '{action}'")
    if action == "report" and out is not None:
        raise AlignError("--out writes a cleaned copy: give --pii mask or --pii drop with it")
    if action != "report":
        if out is None:
            raise AlignError(f"--pii {action} writes a copy: name it with --out FILE")
        check_output_path(out, source)


OUTPUT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


def check_output_path(out: str | Path, source: str | Path | None = None) -> None:
    """Refuse an output the writer cannot write, or one that would replace the input (keep the original)."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise AlignError(f"--out must end in {', '.join(OUTPUT_SUFFIXES)} (the format written)", file=str(out))
    if source is not None and Path(source).exists() and Path(out).exists() and Path(out).samefile(source):
        raise AlignError("--out is the input file: write the copy elsewhere and keep the original until you have "
                         "checked it", file=str(out))
    if Path(out).is_dir():
        raise AlignError("--out is a directory; name a file", file=str(out))


def write_records(out: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write ``records`` in the format ``out``'s suffix names, atomically: a temporary file beside ``out``, synced,
    then renamed over it, so ``out`` is never half-written."""
    path = Path(out)
    check_output_path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        def write(f: Any) -> None:
            pq.write_table(pa.Table.from_pylist(records), f)
    else:
        data = _text(records, suffix).encode("utf-8")

        def write(f: Any) -> None:
            f.write(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def _text(records: list[dict[str, Any]], suffix: str) -> str:
    if suffix == ".csv":
        names: dict[str, None] = {}
        for r in records:
            names.update(dict.fromkeys(r))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        for r in records:
            # Messages and other structures as JSON text, the form the CSV loader reads back; a missing value
            # as an empty cell, which it reads as missing.
            writer.writerow([_cell(r.get(name)) for name in names])
        return buffer.getvalue()
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if suffix == ".json":
        return "[\n" + ",\n".join(lines) + "\n]\n"
    return "".join(line + "\n" for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
