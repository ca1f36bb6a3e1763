"""The target the environment defines, as the Go postgres_exporter's users set it."""

from pathlib import Path

import pytest
import yaml

from exporter.config import Config
from exporter.datasource import NONE_FOUND, load
from exporter.errors import ConfigError

URI = "db.example:5433/app?sslmode=require"


def problems(path: Path | None, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load(path, env)
    return raised.value.problems


def only_target(config: Config) -> tuple[str, str, str]:
    """(name, the DSN without secrets, the full conninfo)."""
    [target] = config.targets
    return target.name, target.safe_dsn(), target.conninfo()


def test_data_source_name_alone() -> None:
    config = load(None, {"DATA_SOURCE_NAME": "postgresql://u:pw@db:5432/app"})
    name, safe, _ = only_target(config)
    assert (name, safe) == ("default", "user=u dbname=app host=db port=5432")
    assert problems(None, {}) == [NONE_FOUND]
    assert "DATA_SOURCE_NAME" in NONE_FOUND
    assert "DATA_SOURCE_URI" in NONE_FOUND


def test_uri_user_and_password() -> None:
    # '@', '/' and ':' would break a URI if the password were pasted into one.
    secret = "p@ss/w:rd ${HOME}"
    config = load(
        None,
        {"DATA_SOURCE_URI": URI, "DATA_SOURCE_USER": "mon@itor", "DATA_SOURCE_PASS": secret},
    )
    name, safe, conninfo = only_target(config)
    assert name == "default"
    assert safe == "user=mon@itor dbname=app host=db.example port=5433 sslmode=require"
    assert config.targets[0].password is not None
    # Used as given: `${HOME}` is not interpolated in a value from the environment.
    assert config.targets[0].password.get_secret_value() == secret
    assert secret not in safe
    assert secret in config.targets[0].secrets()  # so the logs mask it
    assert "sslmode=require" in conninfo


def test_a_scheme_in_the_uri_is_tolerated() -> None:
    config = load(None, {"DATA_SOURCE_URI": "postgresql://db/app", "DATA_SOURCE_USER": "u"})
    assert only_target(config)[1] == "user=u dbname=app host=db"


def test_files_win_over_variables(tmp_path: Path) -> None:
    (tmp_path / "user").write_text(" monitor \n")  # trimmed, as the Go exporter does
    (tmp_path / "uri").write_text("db:5432/app\n")
    (tmp_path / "pass").write_text("from-file\n")
    config = load(
        None,
        {
            "DATA_SOURCE_URI": "ignored:1/x",
            "DATA_SOURCE_URI_FILE": str(tmp_path / "uri"),
            "DATA_SOURCE_USER": "ignored",
            "DATA_SOURCE_USER_FILE": str(tmp_path / "user"),
            "DATA_SOURCE_PASS": "ignored",
            "DATA_SOURCE_PASS_FILE": str(tmp_path / "pass"),
        },
    )
    _, safe, conninfo = only_target(config)
    assert safe == "user=monitor dbname=app host=db port=5432"
    assert "password=from-file" in conninfo
    # Kept as a password_file: re-read on reload, checked for its permissions.
    assert config.targets[0].password_file == tmp_path / "pass"


def test_data_source_name_wins_over_the_uri() -> None:
    config = load(None, {"DATA_SOURCE_NAME": "host=a dbname=x", "DATA_SOURCE_URI": URI})
    assert only_target(config)[1] == "dbname=x host=a"


def test_a_config_without_targets_takes_the_environments(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"collectors": {"tables": {"enabled": False}}}))
    config = load(path, {"DATA_SOURCE_URI": URI})
    assert only_target(config)[0] == "default"
    assert not config.collector("tables").spec.enabled
    assert problems(path, {}) == [
        "targets: none given, and neither DATA_SOURCE_NAME nor DATA_SOURCE_URI is set"
    ]


def test_a_config_with_targets_ignores_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"targets": [{"name": "mine", "dsn": "host=h"}]}))
    env = {"DATA_SOURCE_URI": URI, "DATA_SOURCE_USER_FILE": str(tmp_path / "missing")}
    assert only_target(load(path, env))[0] == "mine"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"DATA_SOURCE_URI": "db:notaport/app"},
            "DATA_SOURCE_URI: port 'notaport' is not a number",
        ),
        (
            {"DATA_SOURCE_NAME": "host=db port=x"},
            "DATA_SOURCE_NAME: port 'x' is not a number",
        ),
        (
            {"DATA_SOURCE_URI": URI, "DATA_SOURCE_PASS_FILE": "/nonexistent/pass"},
            "DATA_SOURCE_PASS_FILE: cannot read /nonexistent/pass: No such file or directory",
        ),
        (
            {"DATA_SOURCE_URI": URI, "DATA_SOURCE_USER_FILE": "/nonexistent/user"},
            "DATA_SOURCE_USER_FILE: cannot read /nonexistent/user: No such file or directory",
        ),
        (
            {"DATA_SOURCE_URI_FILE": "/nonexistent/uri"},
            "DATA_SOURCE_URI_FILE: cannot read /nonexistent/uri: No such file or directory",
        ),
    ],
    ids=["uri-port", "name-port", "pass-file", "user-file", "uri-file"],
)
def test_problems_name_the_variable(env: dict[str, str], expected: str) -> None:
    assert problems(None, env) == [expected]


def test_problems_never_echo_the_password() -> None:
    secret = "Zx9qLeak"
    found = problems(None, {"DATA_SOURCE_URI": "db:bad/app", "DATA_SOURCE_PASS": secret})
    assert found == ["DATA_SOURCE_URI: port 'bad' is not a number"]
