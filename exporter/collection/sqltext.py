"""Statement text made fit for a label: secrets masked, whitespace collapsed, length capped.

pg_stat_statements replaces the constants of ordinary statements with $1, $2, ... but keeps
utility statements as written, so `ALTER ROLE app PASSWORD '...'` reaches the `statement_text`
collector with its password. Secrets are found by lexing the text as PostgreSQL's scanner
(src/backend/parser/scan.l) does, not by a pattern: every quoting form ('...' with doubled
quotes, E'...' with backslash escapes, U&'...', N'...', B'...', X'...', $$...$$, $tag$...$tag$,
string continuation across a newline), quoted identifiers, nested /* */ comments. A text that
cannot be lexed (an unterminated literal or comment), or that lexes differently depending on
standard_conforming_strings, is hidden whole.

Masked: a string literal that follows a word ending in `password` (PASSWORD '...', ENCRYPTED
PASSWORD '...', OPTIONS (password '...'), sslpassword = '...'), one whose content mentions
a password (a connection string, a DO block that sets one), the parts continuing either, and
comments that mention a password. Each becomes '****'.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Cursor
from psycopg.rows import RowFactory, RowMaker

from exporter.catalogue import CollectorSpec

HIDDEN = "'****'"
UNLEXABLE = "(statement hidden: it cannot be lexed)"

_SPACE = " \t\n\r\f\v"
_NUMBER = re.compile(r"(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_PARAM = re.compile(r"\$\d+")
_COLLAPSE = re.compile(r"[ \t\n\r\f\v]+")  # PostgreSQL's \s, as the SQL used to collapse


class Unlexable(ValueError):
    """PostgreSQL's scanner would reject the text (an unterminated literal or comment)."""


@dataclass(frozen=True)
class Token:
    # space, comment, ident (a keyword or a name, lowercased), qident, string, param,
    # number, op (any other character)
    kind: str
    start: int
    end: int
    value: str  # ident: the name lowercased; qident, string, comment: the text inside


def _is_ident_start(char: str) -> bool:
    return (char.isascii() and (char.isalpha() or char == "_")) or char >= "\x80"


def _is_ident_char(char: str) -> bool:
    return _is_ident_start(char) or char.isdigit() or char == "$"


def tokens(text: str, *, standard_strings: bool = True) -> list[Token]:
    """The text as PostgreSQL's scanner splits it; `standard_strings` is the session's
    standard_conforming_strings (off: backslashes escape in '...' too)."""
    found: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        ahead = text[i + 1 : i + 3]
        if char in _SPACE:
            end = i
            while end < n and text[end] in _SPACE:
                end += 1
            found.append(Token("space", i, end, text[i:end]))
        elif text.startswith("--", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            found.append(Token("comment", i, end, text[i + 2 : end]))
        elif text.startswith("/*", i):
            end = _block_comment_end(text, i)
            found.append(Token("comment", i, end, text[i + 2 : end - 2]))
        elif char in "eE" and ahead[:1] == "'":
            found.append(_string(text, i, i + 1, escapes=True))
        elif char in "nN" and ahead[:1] == "'":
            found.append(_string(text, i, i + 1, escapes=not standard_strings))
        elif char in "bBxX" and ahead[:1] == "'":
            found.append(_string(text, i, i + 1, escapes=False, doubled=False))
        elif char in "uU" and ahead == "&'":
            found.append(_string(text, i, i + 2, escapes=False))
        elif char in "uU" and ahead == '&"':
            found.append(_quoted_identifier(text, i, i + 2))
        elif char == "'":
            found.append(_string(text, i, i, escapes=not standard_strings))
        elif char == '"':
            found.append(_quoted_identifier(text, i, i))
        elif char == "$" and (tag := _DOLLAR_TAG.match(text, i)):
            close = text.find(tag.group(), tag.end())
            if close < 0:
                raise Unlexable(f"unterminated dollar-quoted string at {i}")
            end = close + len(tag.group())
            found.append(Token("string", i, end, text[tag.end() : close]))
        elif char == "$" and (param := _PARAM.match(text, i)):
            found.append(Token("param", i, param.end(), param.group()))
        elif _is_ident_start(char):
            end = i + 1
            while end < n and _is_ident_char(text[end]):
                end += 1
            found.append(Token("ident", i, end, text[i:end].lower()))
        elif number := _NUMBER.match(text, i):
            found.append(Token("number", i, number.end(), number.group()))
        else:
            found.append(Token("op", i, i + 1, char))
        i = found[-1].end
    return found


def _block_comment_end(text: str, start: int) -> int:
    depth, i = 0, start
    while i < len(text):
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise Unlexable(f"unterminated /* comment at {start}")


def _string(text: str, start: int, quote: int, *, escapes: bool, doubled: bool = True) -> Token:
    """A string literal whose opening quote is at `quote` (after a prefix, if any), with its
    continuation: a quote, whitespace holding a newline, a quote, as PostgreSQL joins them."""
    i, n = quote + 1, len(text)
    parts: list[str] = []  # the text of each part, between its quotes
    part_start = i
    while i < n:
        char = text[i]
        if escapes and char == "\\":
            i += 2
            continue
        if char != "'":
            i += 1
            continue
        if doubled and text.startswith("''", i):
            i += 2
            continue
        after = i + 1
        while after < n and text[after] in _SPACE:
            after += 1
        gap = text[i + 1 : after]
        if after < n and text[after] == "'" and ("\n" in gap or "\r" in gap):
            parts.append(text[part_start:i])
            i = part_start = after + 1  # continued
            continue
        parts.append(text[part_start:i])
        return Token("string", start, i + 1, "".join(parts))
    raise Unlexable(f"unterminated string literal at {start}")


def _quoted_identifier(text: str, start: int, quote: int) -> Token:
    i = quote + 1
    while True:
        close = text.find('"', i)
        if close < 0:
            raise Unlexable(f"unterminated quoted identifier at {start}")
        if text.startswith('""', close):
            i = close + 2
            continue
        return Token("qident", start, close + 1, text[quote + 1 : close].replace('""', '"'))


def _lex(text: str) -> list[Token] | None:
    """The tokens, or None when the text cannot be lexed or depends on
    standard_conforming_strings (a backslash in a '...' literal)."""
    readings = []
    for standard in (True, False) if "\\" in text else (True,):
        try:
            readings.append(tokens(text, standard_strings=standard))
        except Unlexable:
            continue
    if not readings:
        return None
    spans = {tuple((t.kind, t.start, t.end) for t in reading) for reading in readings}
    return readings[0] if len(spans) == 1 else None


def _mentions_password(text: str) -> bool:
    return "password" in text.lower()


def mask_secrets(text: str) -> str:
    """The statement with every secret literal replaced by '****' (see the module's doc), or
    UNLEXABLE in place of the whole text when it cannot be lexed unambiguously."""
    lexed = _lex(text)
    if lexed is None:
        return UNLEXABLE
    out: list[str] = []
    previous: list[Token] = []  # the significant tokens so far; a masked string as HIDDEN
    masked_last = False
    for token in lexed:
        piece = text[token.start : token.end]
        if token.kind == "comment":
            if _mentions_password(token.value):
                piece = "-- ****" if piece.startswith("--") else "/* **** */"
        elif token.kind == "string":
            masked_last = _is_secret(token, previous, masked_last)
            if masked_last:
                piece = HIDDEN
        if token.kind not in ("space", "comment"):
            previous.append(token)
            if token.kind != "string":
                masked_last = False
        out.append(piece)
    return "".join(out)


def _is_secret(token: Token, previous: list[Token], masked_last: bool) -> bool:
    if masked_last or _mentions_password(token.value):
        return True  # continues a secret (after a comment), or a connection string
    before = previous[-2:] if previous and previous[-1].value == "=" else previous[-1:]
    name = before[0] if before else None
    if name is not None and name.kind in ("ident", "qident"):
        return name.value.lower().endswith("password")
    return False


def statement_label(text: str, max_length: int) -> str:
    """A statement's text for a label: secrets masked, whitespace collapsed, at most
    `max_length` characters."""
    return _COLLAPSE.sub(" ", mask_secrets(text)).strip()[:max_length]


def statement_rows(spec: CollectorSpec) -> RowFactory[tuple[Any, ...]] | None:
    """A psycopg row factory that makes each SQL text column (`statement:`) fit for a label
    as rows are read, or None when the collector has none. Rows are changed before anything
    else sees them (row caps, labels), whatever turns them into series."""
    lengths = spec.statement_columns()
    if not lengths:
        return None

    def factory(cursor: Cursor[Any]) -> RowMaker[tuple[Any, ...]]:
        names = [column.name for column in cursor.description or ()]
        texts = [(i, lengths[name]) for i, name in enumerate(names) if name in lengths]

        def make(values: Sequence[Any]) -> tuple[Any, ...]:
            row = list(values)
            for i, length in texts:
                if isinstance(row[i], str):
                    row[i] = statement_label(row[i], length)
            return tuple(row)

        return make

    return factory
