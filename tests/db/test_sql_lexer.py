"""The statement lexer (collection/sqltext.py) reads literals where PostgreSQL does: every
generated literal, in every quoting form, is one string token to the lexer and the same value
to a real server."""

from collections.abc import Callable, Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.collection.sqltext import tokens
from exporter.demo.embedded import LocalPostgres
from support.sqlliterals import FORMS


@pytest.fixture(scope="module")
def conn(postgres: LocalPostgres) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(postgres.dsn(), autocommit=True) as connection:
        yield connection


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        max_size=20,
    ),
    form=st.sampled_from(FORMS),
)
def test_literals_lex_as_postgresql_reads_them(
    conn: psycopg.Connection[tuple[object, ...]], value: str, form: Callable[[str], str]
) -> None:
    literal = form(value)
    statement = f"SELECT {literal} AS v, 'after' AS w"
    found = [t for t in tokens(statement) if t.kind == "string"]
    assert [statement[t.start : t.end] for t in found] == [literal, "'after'"]
    row = conn.execute(statement.encode()).fetchone()
    assert row == (value, "after")
