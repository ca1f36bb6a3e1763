"""Masking secrets in statement text by lexing it as PostgreSQL does (no server here; the
lexer's reading of literals is checked against a real one in tests/db/test_statement_text.py).
"""

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.collection.sqltext import (
    HIDDEN,
    UNLEXABLE,
    Unlexable,
    mask_secrets,
    statement_label,
    tokens,
)
from support.sqlliterals import FORMS

pytestmark = pytest.mark.any_major

# Around every generated secret: a leak of any part of it, head or tail, shows one of these.
HEAD, TAIL = "Qv7hd", "Zk3tl"

values = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=24
)


STATEMENTS = [
    "ALTER ROLE app PASSWORD {}",
    "alter role app with encrypted password {} valid until 'infinity'",
    "CREATE ROLE app LOGIN PASSWORD {} IN ROLE pg_monitor",
    "CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'app', password {})",
    'ALTER USER MAPPING FOR app SERVER remote OPTIONS (SET "password" {})',
    "ALTER SERVER remote OPTIONS (ADD sslpassword = {})",
    "ALTER ROLE app PASSWORD /* rotated */ {}",
]


@settings(max_examples=300)
@given(
    secret=values,
    form=st.sampled_from(FORMS),
    template=st.sampled_from(STATEMENTS),
)
def test_no_part_of_a_secret_is_published(
    secret: str, form: Callable[[str], str], template: str
) -> None:
    secret = HEAD + secret + TAIL
    literal = form(secret)
    statement = template.format(literal)
    masked = mask_secrets(statement)
    assert HEAD not in masked and TAIL not in masked, (statement, masked)
    if masked != UNLEXABLE:
        assert masked == template.format(HIDDEN), (statement, masked)


@settings(max_examples=200)
@given(secret=values, form=st.sampled_from(FORMS))
def test_connection_strings_are_masked(secret: str, form: Callable[[str], str]) -> None:
    conninfo = f"host=db.example port=5432 password={HEAD}{secret}{TAIL} dbname=app"
    statement = f"CREATE SUBSCRIPTION s CONNECTION {form(conninfo)} PUBLICATION p"
    masked = mask_secrets(statement)
    assert HEAD not in masked and TAIL not in masked, (statement, masked)


@settings(max_examples=500)
@given(st.text(max_size=80))
def test_any_text_lexes_losslessly_or_is_hidden_whole(text: str) -> None:
    masked = mask_secrets(text)  # never raises
    try:
        found = tokens(text)
    except Unlexable:
        return
    assert "".join(text[t.start : t.end] for t in found) == text
    assert all(a.end == b.start for a, b in itertools.pairwise(found))
    if "password" not in text.lower():
        assert masked in (text, UNLEXABLE)


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("ALTER ROLE a PASSWORD 'it''s'", f"ALTER ROLE a PASSWORD {HIDDEN}"),
        ("ALTER ROLE a PASSWORD E'it\\'s' LOGIN", f"ALTER ROLE a PASSWORD {HIDDEN} LOGIN"),
        ("ALTER ROLE a PASSWORD $$x'y$$", f"ALTER ROLE a PASSWORD {HIDDEN}"),
        ("ALTER ROLE a PASSWORD $t$x$$y$t$", f"ALTER ROLE a PASSWORD {HIDDEN}"),
        ("ALTER ROLE a PASSWORD U&'d\\0061t'", f"ALTER ROLE a PASSWORD {HIDDEN}"),
        ("ALTER ROLE a PASSWORD 'ab'\n 'cd' LOGIN", f"ALTER ROLE a PASSWORD {HIDDEN} LOGIN"),
        (
            "ALTER ROLE a PASSWORD 'ab' -- x\n 'cd'",
            f"ALTER ROLE a PASSWORD {HIDDEN} -- x\n {HIDDEN}",
        ),
        ("ALTER ROLE a PASSWORD NULL", "ALTER ROLE a PASSWORD NULL"),
        ('SELECT $1, \'plain\', "we""ird" FROM t', 'SELECT $1, \'plain\', "we""ird" FROM t'),
        ("SELECT dblink('dbname=x password=y')", f"SELECT dblink({HIDDEN})"),
        ("DO $$BEGIN EXECUTE 'ALTER ROLE a PASSWORD ''x'''; END$$", f"DO {HIDDEN}"),
        ("SELECT 1 /* password: x */", "SELECT 1 /* **** */"),
        (
            "SELECT 1 /* nested /* comment */ still */ + 2",
            "SELECT 1 /* nested /* comment */ still */ + 2",
        ),
        ("ALTER ROLE a PASSWORD 'unterminated", UNLEXABLE),
        ("ALTER ROLE a PASSWORD $$unterminated", UNLEXABLE),
        ("SELECT 1 /* unterminated", UNLEXABLE),
        ('SELECT "unterminated', UNLEXABLE),
        # A backslash in a '...' literal reads differently with standard_conforming_strings
        # off: ambiguous, so hidden whole.
        ("ALTER ROLE a PASSWORD '\\'\\''", UNLEXABLE),
        # ... unless only one reading lexes at all: PostgreSQL ran it, so that one.
        ("ALTER ROLE a PASSWORD 'a\\' || 'b'", f"ALTER ROLE a PASSWORD {HIDDEN} || 'b'"),
        ("SELECT a$b$c, $1 FROM t", "SELECT a$b$c, $1 FROM t"),
    ],
)
def test_examples(statement: str, expected: str) -> None:
    assert mask_secrets(statement) == expected


def test_label_is_masked_collapsed_and_cut() -> None:
    text = "ALTER ROLE a\n\tPASSWORD  'secret value'   VALID UNTIL 'infinity'"
    assert statement_label(text, 200) == f"ALTER ROLE a PASSWORD {HIDDEN} VALID UNTIL 'infinity'"
    # Cut after masking: a cut inside the literal would otherwise leave it unterminated.
    assert statement_label(text, 24) == "ALTER ROLE a PASSWORD '*"
