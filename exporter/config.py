"""Loading and validating config.yaml.

Every problem is reported at once as `path.to.key: message` (the CLI exits with code 2), and no
message ever repeats a password: DSNs are checked without echoing them.
"""

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.catalogue import Collector, resolve
from exporter.catalogue.spec import MIN_INTERVAL
from exporter.errors import ConfigError, validation_problems
from exporter.units import Budget, Duration, parse_listen_address

DEFAULT_LISTEN_ADDRESS = ":9188"
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


class TargetConfig(BaseModel):
    """One PostgreSQL server to monitor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    type: Literal["postgres", "pgbouncer"] = "postgres"
    dsn: SecretStr
    password_file: Path | None = None
    max_connections: int = Field(default=2, ge=2, le=20)
    connect_timeout: Duration = 5.0
    lock_timeout: Duration = 1.0
    idle_in_transaction_timeout: Duration = 60.0
    # Database time the collectors may use on this server, per second (README: the budget).
    database_time_budget: Budget = 0.005
    databases: DatabaseFilter = DatabaseFilter()
    # Usually `${ENV_VAR}`; or read from password_file at load time. Never printed.
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> "TargetConfig":
        if self.password_file is not None and "password" in self.model_fields_set:
            raise ValueError("give password or password_file, not both")
        return self

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


class Config(BaseModel):
    """The whole validated configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen_address: str = DEFAULT_LISTEN_ADDRESS
    up_interval: Duration = 15.0
    max_age_intervals: float = Field(default=3.0, ge=1.0)
    # `postgres_exporter`: also publish the Go exporter's names (docs/migrating-from-...md).
    compat: Literal["none", "postgres_exporter"] = "none"
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

    @field_validator("listen_address")
    @classmethod
    def _address(cls, address: str) -> str:
        parse_listen_address(address)
        return address

    @field_validator("targets")
    @classmethod
    def _named_once(cls, targets: tuple[TargetConfig, ...]) -> tuple[TargetConfig, ...]:
        if not targets:
            raise ValueError(NO_TARGETS)
        names = [t.name for t in targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate target name(s): {', '.join(duplicates)}")
        return targets

    def collector(self, name: str) -> Collector:
        return next(c for c in self.catalogue if c.name == name)


def _interpolate(node: Any, path: str, problems: list[str]) -> Any:
    """Replace `${VAR}` in every string with the environment variable's value."""
    if isinstance(node, dict):
        return {
            k: _interpolate(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, f"{path}.{i}", problems) for i, v in enumerate(node)]
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
    """Fill each target's password from its password_file."""
    targets = []
    for index, target in enumerate(config.targets):
        if target.password_file is None:
            targets.append(target)
            continue
        try:
            secret = target.password_file.read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(
                f"targets.{index}.password_file: cannot read {target.password_file}: "
                + why_unreadable(exc)
            )
            targets.append(target)
        else:
            targets.append(target.model_copy(update={"password": SecretStr(secret)}))
    return config.model_copy(update={"targets": tuple(targets)})


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
    raw = _interpolate(raw, "", problems)
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
