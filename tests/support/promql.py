"""The metric names a PromQL expression reads, without a PromQL parser.

Used by the rule tests and the end-to-end tests to check that every metric a rule or a
dashboard query refers to exists. A small scanner is enough for that: it drops what can hold
text that looks like a name (strings, comments, label matchers, ranges, the label lists of
by/without/on/ignoring/group_left/group_right), then keeps the identifiers that are neither
keywords nor followed by "(" (functions and aggregations). A name selected with
{__name__="..."} counts too; one selected with a regular expression cannot be known and is
not reported.
"""

import re

# Keywords and modifiers of PromQL (case-insensitive), and the literals inf and nan.
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "atan2",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
    }
)

_QUOTES = "\"'`"
_PLACEHOLDER = re.compile(r'"(\d+)"')
_BRACES = re.compile(r"\{[^{}]*\}")
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"(\d+)"')
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
# Numbers (hex, decimal, exponent) and durations (5m, 1h30m) are read as one token, so that
# the unit of a duration or the exponent of a number is never taken for a name.
_TOKEN = re.compile(
    r"(?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
)


def _mask_strings_and_comments(expr: str) -> tuple[str, list[str]]:
    """Replace each string literal by "<n>" (its index in the returned list), drop comments."""
    out: list[str] = []
    strings: list[str] = []
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in _QUOTES:
            quote, value, i = char, [], i + 1
            while i < len(expr) and expr[i] != quote:
                # Raw (backtick) strings have no escapes.
                if expr[i] == "\\" and quote != "`" and i + 1 < len(expr):
                    i += 1
                value.append(expr[i])
                i += 1
            i += 1  # the closing quote
            out.append(f'"{len(strings)}"')
            strings.append("".join(value))
        elif char == "#":
            while i < len(expr) and expr[i] != "\n":
                i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out), strings


def metric_names(expr: str) -> set[str]:
    """Names of the metrics (and recorded series) that `expr` selects."""
    text, strings = _mask_strings_and_comments(expr)
    names: set[str] = set()
    for matchers in _BRACES.findall(text):
        names.update(strings[int(index)] for index in _NAME_MATCHER.findall(matchers))
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _PLACEHOLDER.sub(" ", text)
    for token in _TOKEN.finditer(text):
        name = token.group("ident")
        if name is None or name.lower() in KEYWORDS:
            continue
        if text[token.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        names.add(name)
    return names
