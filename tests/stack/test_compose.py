"""The docker-compose stack, checked without Docker (CI cannot run it): every file the stack
mounts or builds from exists in the repository, each service's configuration passes that
service's own checker (promtool, amtool, the exporter's config loader), the services point at
each other by the right names and ports, and the PostgreSQL init script and load generator
run against a real PostgreSQL with the real psql and pgbench."""

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from exporter.config import load_config
from exporter.demo.embedded import LocalPostgres
from exporter.errors import ConfigError
from support import REPO, free_port, tool, wait_for

# The stack runs PostgreSQL 17 whatever major the suite runs on: checking it once is enough.
pytestmark = pytest.mark.any_major

COMPOSE_FILE = REPO / "docker-compose.yml"
PASSWORD_VARIABLE = "PG_HEALTH_EXPORTER_PASSWORD"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"docker-compose.yml has no service {name!r}"
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def bind_mounts(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of a service's bind mounts, short and long syntax; named
    volumes are left out (a short-syntax source without a slash is a volume name)."""
    mounts = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if "/" in source or source.startswith("."):
                mounts.append((source, target))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def named_volumes(spec: dict[str, Any]) -> list[str]:
    names = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":")[0]
            if "/" not in source and not source.startswith("."):
                names.append(source)
        elif volume.get("type") == "volume":
            names.append(volume["source"])
    return names


def host_path(source: str) -> Path:
    # Absolute host paths would tie the stack to one machine; relative ones are relative
    # to the compose file, the repository root.
    assert not Path(source).is_absolute(), f"{source}: bind mounts must be relative paths"
    return (REPO / source).resolve()


def mount_source(spec: dict[str, Any], target: str) -> Path:
    """The repository path a service mounts at `target` in its container."""
    for source, mounted_at in bind_mounts(spec):
        if mounted_at == target:
            return host_path(source)
    pytest.fail(f"nothing is mounted at {target}")


def lay_out_container(spec: dict[str, Any], root: Path) -> None:
    """Copy a service's bind mounts under `root` at their container paths, so a checker run
    on `root/<config path>` sees the files where the container will."""
    for source, target in bind_mounts(spec):
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        path = host_path(source)
        if path.is_dir():
            shutil.copytree(path, destination)
        else:
            shutil.copy(path, destination)


def flag(spec: dict[str, Any], name: str) -> str:
    """The value of `--name=value` in a service's command."""
    for argument in spec.get("command", []):
        if argument.startswith(f"--{name}="):
            return str(argument.split("=", 1)[1])
    pytest.fail(f"the command has no --{name}")


# --- the compose file itself ------------------------------------------------------------------


def test_every_bind_mount_exists(compose: dict[str, Any]) -> None:
    mounts = [
        (name, s, t) for name, spec in compose["services"].items() for s, t in bind_mounts(spec)
    ]
    assert mounts, "no bind mounts found: the parser above is out of step with the file"
    missing = [f"{name}: {source}" for name, source, _ in mounts if not host_path(source).exists()]
    assert missing == []


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {v for spec in compose["services"].values() for v in named_volumes(spec)}
    assert used <= declared


def test_build_contexts_and_dockerfiles_exist(compose: dict[str, Any]) -> None:
    builds = [spec["build"] for spec in compose["services"].values() if "build" in spec]
    assert builds, "no service builds the exporter image"
    for build in builds:
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert host_path(context).is_dir(), context
        assert (host_path(context) / dockerfile).is_file(), f"{context}/{dockerfile}"


def test_dependencies_are_services(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        depends = spec.get("depends_on", [])
        assert set(depends) <= set(compose["services"]), name


def test_ports_are_published_on_localhost_only(compose: dict[str, Any]) -> None:
    # The stack runs with demo passwords.
    for name, spec in compose["services"].items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_postgres_preloads_pg_stat_statements(compose: dict[str, Any]) -> None:
    command = service(compose, "postgres")["command"]
    assert command[0] == "postgres"
    settings = [command[i + 1] for i, arg in enumerate(command) if arg == "-c"]
    assert "shared_preload_libraries=pg_stat_statements" in settings


def dockerfile_instructions() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.setdefault(keyword.upper(), []).append(rest.strip())
    return instructions


def test_dockerfile_runs_the_exporter_unprivileged_on_its_config(compose: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    assert instructions["FROM"] == ["python:3.12-slim"]
    assert any("pip install" in run for run in instructions["RUN"])
    user = instructions["USER"][-1]
    assert user not in ("root", "0"), "the image must not run as root"
    assert instructions["EXPOSE"] == ["9188"]
    command = json.loads(instructions["CMD"][-1])
    assert command[:2] == ["pg-health-exporter", "--config"]
    # The config the CMD reads is the one the compose stack mounts, and it is ours.
    exporter = service(compose, "exporter")
    assert mount_source(exporter, command[2]) == REPO / "deploy" / "exporter" / "config.yaml"
    # Everything the image copies exists.
    for copy in instructions["COPY"]:
        *sources, _destination = copy.split()
        for source in sources:
            assert (REPO / source).exists(), source


# --- Prometheus -------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool(compose: dict[str, Any], tmp_path: Path) -> None:
    # promtool resolves rule_files relative to the config file's directory, as Prometheus
    # does. Rather than rewriting paths (which would check a config the container never
    # sees), the test copies every bind mount of the service to where the container has it
    # and checks the config there: this fails when prometheus.yml and the mounts disagree.
    prometheus = service(compose, "prometheus")
    lay_out_container(prometheus, tmp_path)
    config = tmp_path / flag(prometheus, "config.file").lstrip("/")
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A glob that matches nothing only warns: require every rule file of alerts/ checked.
    rule_files = sorted((REPO / "alerts").glob("*.yml"))
    assert rule_files, "alerts/ has no rule files"
    rules_dir = config.parent / "rules"
    for rule_file in rule_files:
        assert f"Checking {rules_dir / rule_file.name}\n  SUCCESS" in output, output


def test_prometheus_scrapes_the_exporter_and_alerts_alertmanager(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scrape_targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    exposed = dockerfile_instructions()["EXPOSE"][0]
    assert f"exporter:{exposed}" in scrape_targets
    service(compose, "exporter")
    alertmanagers = {
        target
        for manager in config["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    }
    assert alertmanagers == {"alertmanager:9093"}
    service(compose, "alertmanager")


# --- Alertmanager -----------------------------------------------------------------------------


def test_alertmanager_config_passes_amtool(compose: dict[str, Any], tmp_path: Path) -> None:
    alertmanager = service(compose, "alertmanager")
    lay_out_container(alertmanager, tmp_path)
    config = tmp_path / flag(alertmanager, "config.file").lstrip("/")
    result = subprocess.run(
        [tool("amtool", "prometheus-alertmanager"), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alertmanager_delivers_to_the_webhook_service(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    urls = [
        hook["url"]
        for receiver in config["receivers"]
        for hook in receiver.get("webhook_configs", [])
    ]
    assert urls == ["http://webhook:8080/alerts"]
    webhook = service(compose, "webhook")
    assert mount_source(webhook, "/webhook") == REPO / "deploy" / "webhook"


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "deploy" / "webhook" / "receiver.py")],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, timeout=10, what="the webhook receiver to listen")
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_webhook_receiver_prints_each_alert(
    webhook_receiver: tuple[int, subprocess.Popen[str]],
) -> None:
    port, process = webhook_receiver
    # The shape Alertmanager's webhook_configs POST (payload version 4), trimmed.
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "webhook",
        "groupLabels": {"alertname": "PgSlowStatements"},
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "PgSlowStatements", "severity": "warning"},
                "annotations": {"summary": "Slow statement 42 in app on compose-postgres"},
            }
        ],
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/alerts",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert process.stdout is not None
    summary = process.stdout.readline()
    assert summary == (
        "firing: PgSlowStatements [warning] Slow statement 42 in app on compose-postgres\n"
    )
    assert json.loads(process.stdout.readline()) == payload


# --- the exporter's config --------------------------------------------------------------------


def test_exporter_config_loads_with_the_password_from_the_environment(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_VARIABLE, "s3cret-from-env")
    config = load_config(REPO / "deploy" / "exporter" / "config.yaml")
    (target,) = config.targets
    assert target.password is not None
    assert target.password.get_secret_value() == "s3cret-from-env"
    conninfo = psycopg.conninfo.conninfo_to_dict(target.conninfo())
    # The postgres service, as the role init.sql creates.
    assert conninfo["host"] == "postgres"
    service(compose, "postgres")
    assert conninfo["user"] == "health_exporter"
    assert config.collector("statement_text").spec.enabled
    # The exporter service and the postgres service get the password from the same variable.
    for name in ("exporter", "postgres"):
        environment = service(compose, name)["environment"]
        assert (
            environment[PASSWORD_VARIABLE]
            == f"${{{PASSWORD_VARIABLE}:-demo-only-exporter-password}}"
        )


def test_exporter_config_needs_the_password_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    with pytest.raises(ConfigError) as error:
        load_config(REPO / "deploy" / "exporter" / "config.yaml")
    assert error.value.problems == [
        f"targets.0.password: environment variable {PASSWORD_VARIABLE} is not set"
    ]


# --- Grafana ----------------------------------------------------------------------------------


def test_grafana_provisions_the_dashboards_and_the_datasource(compose: dict[str, Any]) -> None:
    grafana = service(compose, "grafana")
    provisioning = mount_source(grafana, "/etc/grafana/provisioning")
    assert provisioning == REPO / "dashboards" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "pg-health-exporter.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # The provider reads the directory compose mounts the dashboards at.
    dashboards = mount_source(grafana, provider["options"]["path"])
    assert dashboards == REPO / "dashboards"
    assert len(list(dashboards.glob("*.json"))) == 5
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (dashboards / Path(home).name).is_file()

    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    service(compose, "prometheus")
    scrape_interval = yaml.safe_load(
        (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
    )["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


# --- PostgreSQL: init.sql and the load generator ---------------------------------------------


def client_env(postgres: LocalPostgres, **extra: str) -> dict[str, str]:
    """Environment for psql and pgbench of the server's build, with no inherited PG*
    settings that could point them elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    libdir = str(postgres.bindir.parent / "lib")
    env["LD_LIBRARY_PATH"] = (
        f"{libdir}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else libdir
    )
    env.update(PGHOST="127.0.0.1", PGPORT=str(postgres.port), PGUSER="postgres", **extra)
    return env


def psql(postgres: LocalPostgres, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(postgres.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", *args],
        env=client_env(postgres, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def init_sql(postgres: LocalPostgres, **env: str) -> subprocess.CompletedProcess[str]:
    """Run init.sql as the postgres image does: psql as the superuser in POSTGRES_DB."""
    return psql(
        postgres, "--dbname=app", "-f", str(REPO / "deploy" / "postgres" / "init.sql"), **env
    )


def psql_major(postgres: LocalPostgres) -> int:
    version = subprocess.run(
        [str(postgres.bindir / "psql"), "--version"],
        env=client_env(postgres),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return int(version.split()[2].split(".")[0])


@pytest.fixture
def app_server(private_postgres: LocalPostgres) -> LocalPostgres:
    """A server of its own (init.sql creates a role and changes template1), with the
    application database the image creates from POSTGRES_DB."""
    if psql_major(private_postgres) < 15:
        pytest.skip("init.sql uses \\getenv, new in psql 15 (the stack runs postgres:17)")
    with psycopg.connect(private_postgres.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
    return private_postgres


def test_init_sql_creates_the_monitoring_role_and_extensions(app_server: LocalPostgres) -> None:
    # Without the password the script stops before creating anything.
    result = init_sql(app_server)
    assert result.returncode != 0
    assert "PG_HEALTH_EXPORTER_PASSWORD is not set or empty" in result.stderr
    assert init_sql(app_server, PG_HEALTH_EXPORTER_PASSWORD="").returncode != 0
    with psycopg.connect(app_server.dsn()) as conn:
        assert conn.execute("SELECT to_regrole('health_exporter')").fetchone() == (None,)

    result = init_sql(app_server, PG_HEALTH_EXPORTER_PASSWORD="demo-only")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(app_server.dsn()) as conn:
        role = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolpassword IS NOT NULL,"
            " pg_has_role(oid, 'pg_monitor', 'MEMBER')"
            " FROM pg_authid WHERE rolname = 'health_exporter'"
        ).fetchone()
    assert role == (True, False, True, True)
    expected = {
        "app": {"pgstattuple"},
        "postgres": {"pg_stat_statements", "pgstattuple"},
        "template1": {"pgstattuple"},
    }
    for database, extensions in expected.items():
        with psycopg.connect(app_server.dsn(dbname=database)) as conn:
            rows = conn.execute("SELECT extname FROM pg_extension").fetchall()
        assert extensions <= {name for (name,) in rows}, database
    # Sequences created after init.sql (as the load generator does) are readable by the role.
    with psycopg.connect(app_server.dsn(dbname="app"), autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE created_later")
        readable = conn.execute(
            "SELECT has_sequence_privilege('health_exporter', 'created_later', 'SELECT')"
        ).fetchone()
    assert readable == (True,)


def test_init_sql_sets_the_password_from_the_environment(app_server: LocalPostgres) -> None:
    # The test server trusts every login, so check the stored SCRAM secret instead: it must
    # verify the password as given, quote included (psql's :'...' quoting).
    password = "it's demo-only"
    assert init_sql(app_server, PG_HEALTH_EXPORTER_PASSWORD=password).returncode == 0
    with psycopg.connect(app_server.dsn()) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'health_exporter'"
        ).fetchone()
    assert row is not None
    assert scram_verifies(row[0], password)
    assert not scram_verifies(row[0], "another password")


def scram_verifies(secret: str, password: str) -> bool:
    """Whether a stored SCRAM-SHA-256 secret (RFC 5802, as PostgreSQL stores it:
    SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>) belongs to `password`."""
    method, parameters, keys = secret.split("$")
    assert method == "SCRAM-SHA-256"
    iterations, salt = parameters.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


def test_load_generator_scripts_run(private_postgres: LocalPostgres) -> None:
    loadgen = REPO / "deploy" / "loadgen"
    result = subprocess.run(
        ["sh", "-n", str(loadgen / "run.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(private_postgres.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
    env = client_env(private_postgres, PGDATABASE="app")
    pgbench = str(private_postgres.bindir / "pgbench")

    def run(*argv: str) -> None:
        done = subprocess.run(
            list(argv), env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr

    run(pgbench, "--initialize", "--scale=1", "--quiet")
    # Twice: the service runs plant.sql at every start.
    for _ in range(2):
        run(
            str(private_postgres.bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(loadgen / "plant.sql"),
        )
    # The transaction mix of run.sh, a few transactions of it.
    run(
        pgbench,
        "--client=2",
        "--transactions=5",
        "--no-vacuum",
        "--builtin=tpcb-like@18",
        f"--file={loadgen / 'slow.sql'}@1",
        f"--file={loadgen / 'seqscan.sql'}@1",
    )
    # Each custom script on its own, so each is known to run whatever the weights pick.
    for script in ("slow.sql", "seqscan.sql"):
        run(pgbench, "--transactions=1", "--no-vacuum", f"--file={loadgen / script}")
    with psycopg.connect(private_postgres.dsn(dbname="app")) as conn:
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'pgbench_accounts' ORDER BY 1"
        ).fetchall()
        notes = conn.execute("SELECT count(*) FROM account_notes").fetchone()
        foreign_keys = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid = 'account_notes'::regclass"
        ).fetchone()
    assert indexes == [
        ("pgbench_accounts_bid_copy_idx",),
        ("pgbench_accounts_bid_idx",),
        ("pgbench_accounts_pkey",),
    ]
    assert notes == (100,)
    assert foreign_keys == (1,)
