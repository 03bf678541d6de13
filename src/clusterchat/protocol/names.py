"""One rule for user and group names, whatever the database.

A name is stored as given after NFKC normalisation (full-width and
compatibility forms folded: full-width "ALICE" is plain "ALICE"), with surrounding
whitespace trimmed and inner runs of whitespace made one space. Two names
are the same name when their *keys* are equal: the normalised name,
case-folded. That is what XMPP does for the local part of an address
(RFC 7613/8265 PRECIS "UsernameCaseMapped": width-mapped, case-mapped,
NFC) and why Matrix allows only lower case in user ids: "Alice" and
"alice" must not be two people. The key is compared byte for byte in the
database (its own unique column, binary collation on MariaDB), so
MariaDB's ``utf8mb4_general_ci`` (for which "x😀" equals "x😎") and SQLite's
binary comparison give the same answer.

Refused: control characters, line and paragraph separators, bidi controls
(which can make a name display as another), invisible format characters
(except the zero-width joiner and emoji tags, which emoji sequences need),
and names that are empty once trimmed.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

#: Characters, after normalisation; the schema's column widths.
MAX_NAME: Final = 50
#: A key can be longer than its name: case folding expands ("ß" -> "ss").
MAX_KEY: Final = 4 * MAX_NAME

_SPACES = re.compile(r"\s+")
_ZWJ = "\u200d"
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class BadName(ValueError):
    """The sentence says why, for the person who chose the name."""


def normalise(raw: str, what: str = "name") -> str:
    """The name as it will be stored and shown; raises :class:`BadName`."""
    name = unicodedata.normalize("NFKC", raw)
    for ch in name:
        if ch in _BIDI:
            raise BadName(f"the {what} contains a text-direction control (U+{ord(ch):04X})")
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp", "Cs") or (
            category == "Cf" and ch != _ZWJ and not "\U000e0020" <= ch <= "\U000e007f"
        ):
            raise BadName(
                f"the {what} contains an invisible or control character (U+{ord(ch):04X})"
            )
    name = _SPACES.sub(" ", name).strip()
    if not name:
        raise BadName(f"the {what} is empty or only spaces")
    if len(name) > MAX_NAME:
        raise BadName(f"the {what} is longer than {MAX_NAME} characters")
    return name


def key(name: str) -> str:
    """What uniqueness compares: two names with one key are one name."""
    return unicodedata.normalize("NFKC", name.casefold())
