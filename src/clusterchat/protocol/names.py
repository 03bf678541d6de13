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
(which can make a name display as another), invisible characters (format
characters, Unicode's other default-ignorable code points such as the
Hangul fillers and variation selectors, and the blank braille pattern),
a name that begins with a combining mark, and names that are empty once
trimmed. What emoji sequences need is allowed where they need it: a
zero-width joiner between two pictographs, a variation selector after a
symbol (or before a keycap), tag characters after a pictograph (flags).
Elsewhere each is an invisible difference: "alice" followed by a Hangul
filler or a zero-width joiner looks like "alice" and was another account.
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
#: Default-ignorable code points (Unicode's DerivedCoreProperties) that are
#: not format characters (those are refused by category), and U+2800, which
#: draws nothing: names made of them look empty, and added to a name they
#: make a second account that looks like the first.
_BLANK = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0")
_VS = frozenset("\ufe0e\ufe0f")  # text and emoji presentation: emoji need them
_KEYCAP = "\u20e3"
_TAGS = ("\U000e0020", "\U000e007f")  # a flag's subdivision code and its end


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
    _visible(name, what)
    return name


def _pictograph(ch: str) -> bool:
    """An emoji (a symbol), or a code point of the emoji planes newer than
    this Python's Unicode tables."""
    category = unicodedata.category(ch)
    return category == "So" or (category == "Cn" and "\U0001f000" <= ch < "\U00020000")


def _visible(name: str, what: str) -> None:
    """Refuse invisible characters, and the emoji joiners and selectors
    outside the sequences that need them (see the module's docstring)."""
    if unicodedata.category(name[0])[0] == "M":
        raise BadName(f"the {what} begins with a combining mark (U+{ord(name[0]):04X})")
    for i, ch in enumerate(name):
        if ch in _BLANK or "\ufe00" <= ch <= "\ufe0d" or "\U000e0100" <= ch <= "\U000e01ef":
            raise BadName(f"the {what} contains an invisible character (U+{ord(ch):04X})")
        before = name[i - 1] if i else ""
        after = name[i + 1] if i + 1 < len(name) else ""
        if ch == _ZWJ:
            base = name[:i].rstrip("\ufe0f\U0001f3fb\U0001f3fc\U0001f3fd\U0001f3fe\U0001f3ff")
            ok = (base and _pictograph(base[-1]) and after and _pictograph(after)) or (
                before and unicodedata.combining(before) == 9  # after a virama (RFC 5892)
            )
        elif ch in _VS:
            ok = after == _KEYCAP or (bool(before) and unicodedata.category(before)[0] in "SP")
        elif _TAGS[0] <= ch <= _TAGS[1]:
            ok = bool(before) and (_pictograph(before) or _TAGS[0] <= before < _TAGS[1])
            ok = ok and (ch == _TAGS[1] or (bool(after) and _TAGS[0] <= after <= _TAGS[1]))
        else:
            continue
        if not ok:
            raise BadName(
                f"the {what} contains an invisible character (U+{ord(ch):04X}) "
                "outside an emoji sequence"
            )


def key(name: str) -> str:
    """What uniqueness compares: two names with one key are one name."""
    return unicodedata.normalize("NFKC", name.casefold())
