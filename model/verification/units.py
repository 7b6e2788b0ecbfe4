"""Unit spellings: the units a statement may write after a number, and when two spellings agree.

A FHIR Quantity carries a UCUM code (``mL/min/{1.73_m2}``, ``mm[Hg]``, ``10*3/uL``) and often a human
display (``mL/min/1.73m2``, ``mmHg``, ``10^3/uL``); a statement uses either or a common alias (``bpm``).
``canonical_unit`` maps all of them to one key. Conversions between units (mg/dL to umol/L) are not
done: a converted value does not match and the statement is rejected, which errs on the safe side.
"""

from __future__ import annotations

import re

# Surface forms recognised after a number in free text. Longer forms must win over their prefixes
# (``mL/min/1.73m2`` over ``mL/min`` over ``mL`` over ``m``), so the pattern sorts them by length.
KNOWN_UNITS: tuple[str, ...] = (
    "mL/min/1.73m2",
    "mL/min/1.73 m2",
    "mL/min/1.73m²",
    "mL/min/{1.73_m2}",
    "mL/min",
    "mg/dL",
    "g/dL",
    "g/L",
    "mg/L",
    "mmol/L",
    "mEq/L",
    "umol/L",
    "µmol/L",
    "μmol/L",
    "ng/mL",
    "pg/mL",
    "U/L",
    "IU/L",
    "10^3/uL",
    "10*3/uL",
    "x10^3/uL",
    "10^9/L",
    "10*9/L",
    "x10^9/L",
    "K/uL",
    "mmHg",
    "mm[Hg]",
    "/min",
    "bpm",
    "beats/min",
    "breaths/min",
    "kg/m2",
    "kg",
    "g",
    "mg",
    "mcg",
    "ug",
    "µg",
    "cm",
    "mm",
    "mL",
    "L",
    "IU",
    "%",
    "{INR}",
    "°C",
    "Cel",
    "[degF]",
    "°F",
    "HU",
    "mGy",
    "mSv",
    "mGy.cm",
    "mGy*cm",
    "months",
    "month",
    "weeks",
    "week",
    "days",
    "day",
    "years",
    "year",
    "hours",
    "hour",
)

_ALIASES = {
    "bpm": "/min",
    "beats/min": "/min",
    "breaths/min": "/min",
    "x10^3/ul": "10^3/ul",
    "k/ul": "10^3/ul",
    "x10^9/l": "10^9/l",
    "10^9/l": "10^3/ul",  # 10^9/L and 10^3/uL are the same count per volume
    "ml/min/1.73m²": "ml/min/1.73m2",
    "µmol/l": "umol/l",
    "μmol/l": "umol/l",
    "µg": "ug",
    "mcg": "ug",
    "°c": "cel",
    "°f": "degf",
    "mgy*cm": "mgy.cm",
    "month": "months",
    "week": "weeks",
    "day": "days",
    "year": "years",
    "hour": "hours",
    "{inr}": "inr",
}

_UNIT_ALTERNATION = "|".join(re.escape(u) for u in sorted(set(KNOWN_UNITS), key=len, reverse=True))
UNIT_PATTERN = rf"(?:{_UNIT_ALTERNATION})(?![A-Za-z0-9])"


def canonical_unit(unit: str | None) -> str | None:
    """One key per unit: lower case, no spaces, braces, brackets or underscores, ``*`` as ``^``.

    Returns None for a missing or empty unit, and for UCUM's dimensionless ``1`` and annotations that
    only name the test (``{INR}`` becomes ``inr``, still a unit a statement may write or omit).
    """
    if unit is None:
        return None
    key = unit.strip().lower().replace(" ", "")
    if not key or key == "1":
        return None
    key = _ALIASES.get(key, key)
    key = key.replace("{", "").replace("}", "").replace("[", "").replace("]", "").replace("_", "")
    key = key.replace("*", "^")
    return _ALIASES.get(key, key)
