"""Read the checkable claims out of one sentence: quantities, bare numbers, dates, sides, negation.

The same reader runs over a statement and over an evidence item's free text (a report's conclusion), so
both sides of a comparison are read by the same rules. It is deliberately literal: it finds what is
written, it does not interpret; anything it misreads in a statement makes the statement fail closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from model.report import Laterality
from model.verification.units import UNIT_PATTERN

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = "(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?:T[0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)?(?!\d)")
_DAY_MONTH_YEAR = re.compile(rf"\b(\d{{1,2}})\s+({_MONTH})\s+(\d{{4}})\b", re.IGNORECASE)
_MONTH_DAY_YEAR = re.compile(rf"\b({_MONTH})\s+(\d{{1,2}}),?\s+(\d{{4}})\b", re.IGNORECASE)

_NUMBER = r"(\d+(?:\.\d+)?)"
# A number is not part of a word or code (E11.9, HbA1c, ICD-10, 2.25.123) nor a fraction's denominator.
_FREE = r"(?<![\w.^*/])(?<![A-Za-z]-)"
_PAIR = re.compile(rf"{_FREE}{_NUMBER}\s*/\s*{_NUMBER}\s*({UNIT_PATTERN})", re.IGNORECASE)
_QUANTITY = re.compile(rf"{_FREE}{_NUMBER}\s*({UNIT_PATTERN})", re.IGNORECASE)
_BARE = re.compile(rf"{_FREE}{_NUMBER}(?!\d|\.\d)")

_SIDE_WORDS = re.compile(r"\b(left|right|bilateral|bilaterally|both\s+sides)\b", re.IGNORECASE)
_SIDE_ABBREVIATIONS = re.compile(r"\b(RUL|RML|RLL|LUL|LLL|OD|OS|OU)\b")
_SIDE_OF_ABBREVIATION = {
    "RUL": Laterality.RIGHT,
    "RML": Laterality.RIGHT,
    "RLL": Laterality.RIGHT,
    "LUL": Laterality.LEFT,
    "LLL": Laterality.LEFT,
    "OD": Laterality.RIGHT,
    "OS": Laterality.LEFT,
    "OU": Laterality.BILATERAL,
}

_CLAUSE_BREAK = re.compile(r"(?<!\d)[.;](?!\d)|:\s|\bbut\b|\bhowever\b", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")

# NegEx-style cues: ``PRE`` cues negate a concept named after them in the same clause, ``POST`` cues one
# named before them ("pneumonia, resolved").
PRE_NEGATION = (
    "no",
    "not",
    "without",
    "denies",
    "denied",
    "negative for",
    "absence of",
    "free of",
    "never",
    "none",
    "neither",
    "nor",
    "no longer",
    "ruled out",
    "rules out",
    "stopped",
    "discontinued",
)
POST_NEGATION = (
    "resolved",
    "absent",
    "ruled out",
    "stopped",
    "discontinued",
    "inactive",
    "not present",
    "negative",
    "refuted",
)
NEGATION_WINDOW = 6  # tokens between a pre-cue and the concept it negates

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "the",
        "to",
        "was",
        "were",
        "with",
        "this",
        "that",
        "these",
        "those",
        "there",
        "their",
        "his",
        "her",
        "patient",
        "patients",
        "active",
        "problem",
        "history",
        "status",
        "result",
        "results",
        "level",
        "levels",
        "value",
        "values",
        "measured",
        "measurement",
        "test",
        "tests",
        "recent",
        "latest",
        "prior",
        "serum",
        "plasma",
        "blood",
        "mass",
        "volume",
        "moles",
        "predicted",
        "automated",
        "count",
        "total",
        "unspecified",
        "type",
        "stage",
        "oral",
        "tablet",
        "capsule",
        "dose",
        "daily",
        "once",
        "twice",
        "times",
        "per",
        "mg",
        "mmol",
        "g",
        "dl",
        "ml",
        "min",
        "normal",
        "finding",
        "findings",
        "disease",
        "disorder",
        "chronic",
        "acute",
        "syndrome",
        "system",
        "coagulation",
        "assay",
        "substance",
        "views",
        "view",
        "left",
        "right",
        "bilateral",
        "no",
        "not",
        "without",
        "none",
        "never",
    ]
)


@dataclass(frozen=True)
class TextQuantity:
    """A number written with a unit in text; ``unit`` is the surface form."""

    value: Decimal
    unit: str


@dataclass
class TextClaims:
    """Everything checkable that one text states."""

    quantities: list[TextQuantity] = field(default_factory=list)
    numbers: list[Decimal] = field(default_factory=list)
    dates: list[date] = field(default_factory=list)
    sides: set[Laterality] = field(default_factory=set)


def read_claims(text: str) -> TextClaims:
    """Dates first (their digits are not numbers), then ``a/b unit`` pairs, quantities, bare numbers."""
    claims = TextClaims()
    rest = text
    for pattern, order in ((_ISO_DATE, "ymd"), (_DAY_MONTH_YEAR, "dmy"), (_MONTH_DAY_YEAR, "mdy")):
        for match in pattern.finditer(rest):
            parsed = _date_of(match, order)
            if parsed is not None:
                claims.dates.append(parsed)
        rest = pattern.sub(" ", rest)
    for match in _PAIR.finditer(rest):
        unit = match.group(3)
        claims.quantities += [
            TextQuantity(Decimal(match.group(1)), unit),
            TextQuantity(Decimal(match.group(2)), unit),
        ]
    rest = _PAIR.sub(" ", rest)
    for match in _QUANTITY.finditer(rest):
        claims.quantities.append(TextQuantity(Decimal(match.group(1)), match.group(2)))
    rest = _QUANTITY.sub(" ", rest)
    claims.numbers = [Decimal(m.group(1)) for m in _BARE.finditer(rest)]
    claims.sides = read_sides(text)
    return claims


def _date_of(match: re.Match[str], order: str) -> date | None:
    groups = match.groups()
    try:
        if order == "ymd":
            return date(int(groups[0]), int(groups[1]), int(groups[2]))
        if order == "dmy":
            return date(int(groups[2]), _MONTHS[groups[1].lower().rstrip(".")], int(groups[0]))
        return date(int(groups[2]), _MONTHS[groups[0].lower().rstrip(".")], int(groups[1]))
    except ValueError:
        return None  # 2026-02-30 is not a date; the text then states no date here


def read_sides(text: str) -> set[Laterality]:
    """Body sides named in ``text``: words (left, right, bilateral) and lobe / eye abbreviations."""
    sides: set[Laterality] = set()
    for match in _SIDE_WORDS.finditer(text):
        word = match.group(1).lower()
        if word.startswith("bilateral") or word.startswith("both"):
            sides.add(Laterality.BILATERAL)
        else:
            sides.add(Laterality(word))
    for match in _SIDE_ABBREVIATIONS.finditer(text):
        sides.add(_SIDE_OF_ABBREVIATION[match.group(1)])
    return sides


def tokens(text: str) -> list[str]:
    """Lower-case word tokens (letters and digits, inner hyphens kept)."""
    return _TOKEN.findall(text.lower())


def content_words(text: str) -> set[str]:
    """Distinctive words: tokens of three or more characters that are not stop words or pure numbers."""
    return {t for t in tokens(text) if len(t) >= 3 and t not in STOPWORDS and not t.isdigit()}


def clauses(text: str) -> list[str]:
    """Split at sentence and clause breaks (not at decimal points); empty pieces dropped."""
    return [piece.strip() for piece in _CLAUSE_BREAK.split(text) if piece and piece.strip()]


def _cue_positions(words: list[str], cues: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) token spans of every cue phrase in ``words``."""
    spans = []
    for cue in cues:
        parts = cue.split()
        for i in range(len(words) - len(parts) + 1):
            if words[i : i + len(parts)] == parts:
                spans.append((i, i + len(parts)))
    return spans


def clause_negated(clause: str, concept_words: set[str] | None = None) -> bool:
    """Whether ``clause`` negates its concept.

    With ``concept_words`` the concept is the first token of the clause in that set: negated when a
    pre-cue ends at most ``NEGATION_WINDOW`` tokens before it or a post-cue follows it. Without, any cue
    in the clause negates it (the clause as a whole is the concept, as in a report's conclusion).
    """
    words = tokens(clause)
    pre, post = _cue_positions(words, PRE_NEGATION), _cue_positions(words, POST_NEGATION)
    if concept_words is None:
        return bool(pre or post)
    at = next((i for i, w in enumerate(words) if w in concept_words), None)
    if at is None:
        return False
    if any(end <= at and at - end <= NEGATION_WINDOW for _, end in pre):
        return True
    return any(start > at for start, _ in post)
