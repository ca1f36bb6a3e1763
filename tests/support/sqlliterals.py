"""A value written as a PostgreSQL string literal in each of its quoting forms: for the
statement lexer's tests (tests/unit/test_sqltext.py, tests/db/test_sql_lexer.py)."""

from collections.abc import Callable


def standard(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def escaped(value: str) -> str:
    return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def escaped_doubled(value: str) -> str:
    return "e'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def unicode_escaped(value: str) -> str:
    """U&'...': letters and digits as they are, everything else as \\XXXX or \\+XXXXXX."""

    def one(char: str) -> str:
        if char.isascii() and char.isalnum():
            return char
        code = ord(char)
        return f"\\{code:04X}" if code < 0x10000 else f"\\+{code:06X}"

    return "U&'" + "".join(one(c) for c in value) + "'"


def national(value: str) -> str:
    return "N" + standard(value)


def dollar(value: str) -> str:
    for tag in ("", "x", "pw", "a_1", "tag_with_a_long_name"):
        delimiter = f"${tag}$"
        if (value + delimiter).find(delimiter) == len(value):
            return delimiter + value + delimiter
    return standard(value)


def continued(value: str) -> str:
    """Two literals separated by whitespace holding a newline: one literal to PostgreSQL."""
    half = len(value) // 2
    return standard(value[:half]) + " \n  " + standard(value[half:])


FORMS: list[Callable[[str], str]] = [
    standard,
    escaped,
    escaped_doubled,
    unicode_escaped,
    national,
    dollar,
    continued,
]
