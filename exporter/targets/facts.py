"""What a server is and what the monitoring role may see: the probe that selects collectors."""

import re
from dataclasses import dataclass

import psycopg

from exporter.targets.sessions import set_statement_timeout

# One round trip. pg_settings hides superuser-only settings from roles that may not read them,
# so `preload` is NULL (unknown) rather than an error for a least-privilege role.
_PROBE_SQL = """
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       pg_is_in_recovery() AS in_recovery,
       current_database() AS database,
       current_user AS "user",
       (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries') AS preload,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
       ARRAY(SELECT rolname::text FROM pg_roles
             WHERE rolname LIKE 'pg\\_%' AND pg_has_role(current_user, oid, 'USAGE')) AS roles,
       ARRAY(SELECT extname::text FROM pg_extension) AS extensions,
       -- Databases to visit: not templates, accepting connections, and not left invalid by
       -- an interrupted DROP DATABASE (datconnlimit -2, PG 16+); with whether CONNECT is
       -- granted to us (GRANT CONNECT ON DATABASE ... if not). Names as their stored bytes,
       -- converted to no encoding (bytea's input reads only a backslash as an escape, so those
       -- are doubled): a name that is not UTF-8 cannot be given to libpq to connect with.
       ARRAY(SELECT replace(datname::text, '\\', '\\\\')::bytea FROM pg_database
             WHERE datallowconn AND NOT datistemplate AND datconnlimit <> -2
             ORDER BY datname) AS databases,
       ARRAY(SELECT has_database_privilege(oid, 'CONNECT') FROM pg_database
             WHERE datallowconn AND NOT datistemplate AND datconnlimit <> -2
             ORDER BY datname) AS connect
"""


@dataclass(frozen=True)
class ServerFacts:
    version_num: int  # server_version_num; for PgBouncer major*10000 + minor*100 + patch
    version: str
    in_recovery: bool
    database: str  # the database the target's DSN connects to
    user: str  # the role the exporter is connected as (current_user)
    preload: frozenset[str] | None  # None: the role may not read shared_preload_libraries
    superuser: bool
    roles: frozenset[str]
    extensions: frozenset[str]  # installed in `database`
    databases: tuple[str, ...]  # every database the role can visit
    # Databases that accept connections, but not this role's (no CONNECT privilege).
    forbidden_databases: tuple[str, ...] = ()
    # Every database it cannot visit, with why (those, and names that are not UTF-8, whose
    # other bytes read as \\xNN).
    not_visited: tuple[tuple[str, str], ...] = ()

    def has_role(self, role: str) -> bool:
        return self.superuser or role in self.roles


def probe(conn: psycopg.Connection[tuple[object, ...]], *, timeout_seconds: float) -> ServerFacts:
    """Read the server's facts on an open connection, inside a transaction."""
    set_statement_timeout(conn, timeout_seconds)
    row = conn.execute(_PROBE_SQL).fetchone()
    assert row is not None  # a SELECT without FROM always returns one row
    (
        version_num,
        version,
        in_recovery,
        database,
        user,
        preload,
        superuser,
        roles,
        ext,
        dbs,
        grants,
    ) = row
    visitable, not_visited = _visitable(dbs, grants)
    return ServerFacts(
        version_num=int(str(version_num)),
        version=str(version),
        in_recovery=bool(in_recovery),
        database=str(database),
        user=str(user),
        preload=None if preload is None else _split_list(str(preload)),
        superuser=bool(superuser),
        roles=frozenset(_as_strings(roles)),
        extensions=frozenset(_as_strings(ext)),
        databases=visitable,
        forbidden_databases=tuple(db for db, why in not_visited if why == NO_CONNECT),
        not_visited=not_visited,
    )


def probe_pgbouncer(conn: psycopg.Connection[tuple[object, ...]]) -> ServerFacts:
    """PgBouncer's admin console: its version is all there is to know."""
    row = conn.execute("SHOW VERSION").fetchone()
    text = str(row[0]) if row else ""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    major, minor, patch = (int(g or 0) for g in match.groups()) if match else (0, 0, 0)
    return ServerFacts(
        version_num=major * 10000 + minor * 100 + patch,
        version=text.removeprefix("PgBouncer ").strip(),
        in_recovery=False,
        database="pgbouncer",
        user="",
        preload=None,
        superuser=False,
        roles=frozenset(),
        extensions=frozenset(),
        databases=(),
    )


def installed_extensions(conn: psycopg.Connection[tuple[object, ...]]) -> frozenset[str]:
    """Extensions of the database `conn` is connected to (they differ per database)."""
    return frozenset(str(row[0]) for row in conn.execute("SELECT extname FROM pg_extension"))


def _split_list(setting: str) -> frozenset[str]:
    return frozenset(part.strip().strip('"') for part in setting.split(",") if part.strip())


NO_CONNECT = "CONNECT is not granted to the role"
NOT_UTF8 = "its name is not valid UTF-8"


def _visitable(
    names: object, grants: object
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    visitable: list[str] = []
    refused: list[tuple[str, str]] = []
    if not isinstance(names, list) or not isinstance(grants, list):
        return (), ()
    for raw, granted in zip(names, grants, strict=True):
        name = bytes(raw).decode("utf-8", "backslashreplace")
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            refused.append((name, NOT_UTF8))
            continue
        if not granted:
            refused.append((name, NO_CONNECT))
        else:
            visitable.append(name)
    return tuple(visitable), tuple(refused)


def _as_strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
