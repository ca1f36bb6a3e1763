"""Loading and validating config.yaml.

Every problem is reported at once as `path.to.key: message` (the CLI exits with code 2), and no
message ever repeats a password: DSNs are checked without echoing them.
"""

import ipaddress
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exporter.catalogue import Collector, resolve
from exporter.catalogue.spec import MIN_INTERVAL
from exporter.errors import ConfigError, validation_problems
from exporter.units import Budget, Duration, PerMinute, parse_listen_address

DEFAULT_LISTEN_ADDRESS = ":9188"
# Threads that probe targets (a login each), beside the `workers` that run collectors.
PROBE_WORKERS = 4
# 200 ms of database time a minute (a third of a percent of one core): at 10,000 tables about
# 0.4 of what the Go postgres_exporter's defaults spend (BENCHMARKS.md).
DEFAULT_DATABASE_TIME_BUDGET = 0.2 / 60
NO_TARGETS = "none given, and neither DATA_SOURCE_NAME nor DATA_SOURCE_URI is set"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class DatabaseFilter(BaseModel):
    """Which databases per-database collectors visit (regular expressions, whole-name match).

    A database name may hold any character, a newline included: `.` matches it too (DOTALL),
    so the default `.*` visits every database, whatever its name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: tuple[str, ...] = (".*",)
    exclude: tuple[str, ...] = ()

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return patterns

    def allows(self, datname: str) -> bool:
        return any(re.fullmatch(p, datname, re.DOTALL) for p in self.include) and not any(
            re.fullmatch(p, datname, re.DOTALL) for p in self.exclude
        )


class SessionSettings(BaseModel):
    """How the exporter logs in to a server and bounds its sessions there: a target's, and an
    auth module's for the targets /probe makes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["postgres", "pgbouncer"] = "postgres"
    password_file: Path | None = None
    max_connections: int = Field(default=2, ge=2, le=20)
    connect_timeout: Duration = 5.0
    lock_timeout: Duration = 1.0
    idle_in_transaction_timeout: Duration = 60.0
    # Database time the collectors may use on this server, per second (README: the budget).
    database_time_budget: Budget = DEFAULT_DATABASE_TIME_BUDGET
    # New sessions a minute the per-database collectors' visits to the other databases may
    # open, on average (README: visits to other databases; collection.rounds).
    visit_logins_per_minute: PerMinute = 5.0
    databases: DatabaseFilter = DatabaseFilter()
    # Usually `${ENV_VAR}`; or read from password_file at load time. Never printed.
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_file is not None and "password" in self.model_fields_set:
            raise ValueError("give password or password_file, not both")
        return self


class TargetConfig(SessionSettings):
    """One PostgreSQL server to monitor."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    dsn: SecretStr

    @field_validator("dsn")
    @classmethod
    def _parses(cls, dsn: SecretStr) -> SecretStr:
        try:
            params = conninfo_to_dict(dsn.get_secret_value())
        except psycopg.ProgrammingError:
            # libpq's own message may quote the DSN, password included: say it in our words.
            raise ValueError("not a valid libpq connection string or postgresql:// URI") from None
        # libpq parses a port only when connecting; say so now, not as a down target later.
        for port in str(params.get("port") or "").split(","):
            if port and not port.strip().isdigit():
                raise ValueError(f"port {port!r} is not a number")
        return dsn

    @cached_property
    def dsn_params(self) -> dict[str, Any]:
        """The DSN's libpq keywords (password included), parsed once: validated above."""
        return conninfo_to_dict(self.dsn.get_secret_value())

    def conninfo(self, dbname: str | None = None) -> str:
        """The full connection string, secret included: only for handing to libpq."""
        params = dict(self.dsn_params)
        if self.password is not None:
            params["password"] = self.password.get_secret_value()
        if dbname is not None:
            params["dbname"] = dbname
        return make_conninfo("", **params)

    def secrets(self) -> list[str]:
        """Every password this target knows, so messages can be scrubbed of them."""
        found = [self.password.get_secret_value()] if self.password is not None else []
        found += [str(v) for k, v in self.dsn_params.items() if _is_secret(k) and v]
        return [s for s in found if s]

    def safe_dsn(self) -> str:
        """The DSN without its secrets (password, sslpassword), for logs and the landing page."""
        return make_conninfo("", **{k: v for k, v in self.dsn_params.items() if not _is_secret(k)})


def _is_secret(keyword: str) -> bool:
    return keyword.endswith("password")


# A probed target's name is the address it was probed by: `host:port/db` (IPv6 in brackets).
PROBED_NAME = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_.-]*)(:[0-9]{1,5})?(/[A-Za-z0-9_.$-]+)?$"


class ProbedTargetConfig(TargetConfig):
    """A target made by `/probe` from its address and an auth module, named by the address."""

    name: str = Field(pattern=PROBED_NAME)


# The URL gives the server (host, port, database); an auth module gives everything else.
_FROM_THE_URL = ("host", "hostaddr", "port", "dbname", "user", "password", "passfile")


class AuthModule(SessionSettings):
    """How `/probe` logs in to the servers it is asked about: credentials and connection
    options, kept in the config (password files or `${ENV}`), never taken from the URL."""

    user: str | None = None
    sslmode: str | None = None
    database: str = "postgres"  # when the probe's target names none
    # Any other libpq keyword (sslrootcert, application_name is ours, target_session_attrs...).
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _libpq_keywords(cls, options: dict[str, str]) -> dict[str, str]:
        taken = sorted(k for k in options if k in _FROM_THE_URL)
        if taken:
            raise ValueError(
                f"{', '.join(taken)}: not an option here (the probe's target gives the server, "
                "`user`/`password`/`password_file` the login)"
            )
        try:
            make_conninfo("", **options)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"not libpq connection options: {exc}") from None
        return options

    def target(self, name: str, host: str, port: int, dbname: str | None) -> ProbedTargetConfig:
        """The target a probe of `host:port[/dbname]` monitors, named `name`."""
        params: dict[str, Any] = {
            **self.options,
            "host": host,
            "port": port,
            "dbname": dbname or self.database,
        }
        if self.user is not None:
            params["user"] = self.user
        if self.sslmode is not None:
            params["sslmode"] = self.sslmode
        # The name and the DSN are validated; the rest was, as this module's settings.
        probed = ProbedTargetConfig.model_validate(
            {"name": name, "type": self.type, "dsn": make_conninfo("", **params)}
        )
        # The rest is this module's, validated with it (its password already read from
        # password_file, which the target then does not need again).
        shared = set(SessionSettings.model_fields) - {"type", "password_file"}
        return probed.model_copy(update={name: getattr(self, name) for name in shared})

    def secrets(self) -> list[str]:
        return [self.password.get_secret_value()] if self.password is not None else []


class ProbeSettings(BaseModel):
    """Who may be probed through `/probe`, how many at once, and for how long unasked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Host patterns (`*.db.internal`, matched without case) or CIDRs (`10.0.0.0/8`, matched
    # against hosts given as addresses: no name is resolved to check it). Empty: /probe is off,
    # so the exporter cannot be made to reach arbitrary hosts.
    allow: tuple[str, ...] = ()
    max_targets: int = Field(default=100, ge=1)
    # Several scrape intervals: a missed scrape or two must not drop a target and its data.
    idle_timeout: Duration = 300.0

    @field_validator("allow")
    @classmethod
    def _patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            if "/" in pattern:
                try:
                    ipaddress.ip_network(pattern, strict=False)
                except ValueError:
                    raise ValueError(f"{pattern!r} is not a CIDR") from None
            elif not re.fullmatch(r"[A-Za-z0-9_.:*?\[\]-]+", pattern):
                raise ValueError(f"{pattern!r} is neither a host pattern nor a CIDR")
        return patterns

    @field_validator("idle_timeout")
    @classmethod
    def _not_too_short(cls, seconds: float) -> float:
        if seconds < MIN_INTERVAL:
            raise ValueError(f"must be at least {MIN_INTERVAL:g}s")
        return seconds

    @property
    def enabled(self) -> bool:
        return bool(self.allow)


class TargetFiles(BaseModel):
    """Targets kept in files beside the config (ours, or Prometheus file_sd), re-read when
    they change, as a SIGHUP would."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Glob patterns: `/etc/pg-health-exporter/targets.d/*.yaml`, `/etc/prometheus/pg/*.json`.
    paths: tuple[str, ...] = ()
    # How often the files are looked at (their names, sizes and modification times).
    refresh_interval: Duration = 30.0

    @field_validator("refresh_interval")
    @classmethod
    def _not_too_often(cls, seconds: float) -> float:
        if seconds < MIN_INTERVAL:
            raise ValueError(f"must be at least {MIN_INTERVAL:g}s")
        return seconds


class Config(BaseModel):
    """The whole validated configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen_address: str = DEFAULT_LISTEN_ADDRESS
    up_interval: Duration = 15.0
    max_age_intervals: float = Field(default=3.0, ge=1.0)
    # Collector jobs run at once, for all targets together (each target at most its
    # max_connections of them).
    workers: int = Field(default=16, ge=2, le=256)
    # Sessions open at once, for all targets together (targets/connection_cap.py).
    max_connections_total: int = Field(default=200, ge=1)
    # `postgres_exporter`: also publish the Go exporter's names (docs/migrating-from-...md).
    compat: Literal["none", "postgres_exporter"] = "none"
    # Before `targets`: with /probe on, or targets in files, the config may name none.
    probe: ProbeSettings = ProbeSettings()
    target_files: TargetFiles = TargetFiles()
    auth_modules: dict[str, AuthModule] = Field(default_factory=dict)
    # Validated when absent too: its message names the environment's alternative.
    targets: tuple[TargetConfig, ...] = Field(default=(), validate_default=True)
    collectors: dict[str, Any] = Field(default_factory=dict)
    # Resolved from `collectors`: built-ins with overrides, then custom definitions.
    catalogue: tuple[Collector, ...] = Field(default=(), exclude=True)

    @field_validator("collectors", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        return {} if value is None else value  # `collectors:` with everything commented out

    @field_validator("up_interval")
    @classmethod
    def _not_too_often(cls, seconds: float) -> float:
        if seconds < MIN_INTERVAL:
            raise ValueError(f"must be at least {MIN_INTERVAL:g}s")
        return seconds

    @field_validator("max_connections_total")
    @classmethod
    def _room_for_every_job(cls, total: int, info: ValidationInfo) -> int:
        least = info.data.get("workers", 16) + PROBE_WORKERS
        if total < least:
            raise ValueError(
                f"must be at least workers + {PROBE_WORKERS} ({least}): each running job "
                "and probe holds a session"
            )
        return total

    @field_validator("listen_address")
    @classmethod
    def _address(cls, address: str) -> str:
        parse_listen_address(address)
        return address

    @field_validator("targets")
    @classmethod
    def _named_once(
        cls, targets: tuple[TargetConfig, ...], info: ValidationInfo
    ) -> tuple[TargetConfig, ...]:
        # A `probe` section that failed validation is reported on its own: maybe it was on.
        probe, files = info.data.get("probe"), info.data.get("target_files")
        # Target files may hold none right now: service discovery found nothing yet.
        if not targets and probe is not None and not probe.enabled and files and not files.paths:
            raise ValueError(NO_TARGETS)
        names = [t.name for t in targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate target name(s): {', '.join(duplicates)}")
        return targets

    @model_validator(mode="after")
    def _modules_when_probing(self) -> "Config":
        if self.probe.enabled and not self.auth_modules:
            raise ValueError(
                "probe.allow is set but auth_modules is empty: /probe needs at least one "
                "auth module (its credentials; `default` is used when a probe names none)"
            )
        return self

    def collector(self, name: str) -> Collector:
        return next(c for c in self.catalogue if c.name == name)

    def secrets(self) -> list[str]:
        """Every password the config holds (targets and auth modules), to mask in messages."""
        found = [s for t in self.targets for s in t.secrets()]
        return found + [s for m in self.auth_modules.values() for s in m.secrets()]


def interpolate(node: Any, path: str, problems: list[str]) -> Any:
    """Replace `${VAR}` in every string with the environment variable's value."""
    if isinstance(node, dict):
        return {
            k: interpolate(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()
        }
    if isinstance(node, list):
        return [interpolate(v, f"{path}.{i}", problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1))
            if value is None:
                problems.append(f"{path}: environment variable {match.group(1)} is not set")
                return ""
            return value

        return _ENV_REFERENCE.sub(substitute, node)
    return node


def _read_password_files(config: Config, problems: list[str]) -> Config:
    """Fill each target's and auth module's password from its password_file."""
    targets = tuple(
        with_password_file(target, f"targets.{index}", problems)
        for index, target in enumerate(config.targets)
    )
    modules = {
        name: with_password_file(module, f"auth_modules.{name}", problems)
        for name, module in config.auth_modules.items()
    }
    return config.model_copy(update={"targets": targets, "auth_modules": modules})


_Login = TypeVar("_Login", TargetConfig, AuthModule)


def with_password_file(model: _Login, path: str, problems: list[str]) -> _Login:
    if model.password_file is None:
        return model
    try:
        secret = model.password_file.read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(
            f"{path}.password_file: cannot read {model.password_file}: " + why_unreadable(exc)
        )
        return model
    return model.model_copy(update={"password": SecretStr(secret)})


def parse_config(raw: Any, *, default_targets: list[dict[str, Any]] | None = None) -> Config:
    """Validate an already-parsed YAML document; raise ConfigError listing every problem.

    `default_targets` stand in when the document names no targets (the environment's, see
    exporter.datasource). They are added after `${VAR}` interpolation: values that came from
    the environment are used as they are, so a password holding `${` stays that password.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping of settings"])
    problems: list[str] = []
    raw = interpolate(raw, "", problems)
    if not raw.get("targets") and default_targets:
        raw = {**raw, "targets": default_targets}
    config: Config | None = None
    try:
        config = _read_password_files(Config.model_validate(raw), problems)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, model=Config))
    raw_collectors = raw.get("collectors")
    collectors, collector_problems = resolve(
        raw_collectors if isinstance(raw_collectors, dict) else {}
    )
    problems.extend(collector_problems)
    if problems or config is None:
        raise ConfigError(problems)
    return config.model_copy(update={"catalogue": tuple(collectors)})


def read_yaml(path: Path) -> Any:
    """A YAML file's document; ConfigError (with the line) when unreadable or not YAML."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {why_unreadable(exc)}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None


def why_unreadable(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start + 1})"
    return exc.strerror or str(exc)


def load_config(path: Path) -> Config:
    """Read and validate a config file."""
    return parse_config(read_yaml(path))
