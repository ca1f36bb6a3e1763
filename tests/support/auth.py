"""A role that must give its password: scram-sha-256 for it over TCP, trust for the others."""

import psycopg

from exporter.demo.embedded import LocalPostgres
from support import wait_for


def password_role(server: LocalPostgres, role: str, password: str) -> None:
    """Create `role` (LOGIN, pg_monitor) with `password`, and make the server ask it for that
    password on 127.0.0.1; returns once a wrong password is refused."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        # PostgreSQL 13 still stores md5 hashes by default, which scram-sha-256 auth refuses.
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE pg_monitor PASSWORD '{password}'")
    hba = server.datadir / "pg_hba.conf"
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    wrong = f"host=127.0.0.1 port={server.port} dbname=postgres user={role} password=nope"
    wait_for(lambda: refused(wrong), what="password authentication in force")


def refused(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError:
        return True
    return False
