"""Targets from files: our target entries and Prometheus file_sd groups, problems named by
the file, and the fingerprint that tells the daemon to reload."""

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import Config, parse_config
from exporter.errors import ConfigError
from exporter.secretfiles import exposed_secret_files
from exporter.targets.files import Fingerprint, with_target_files

pytestmark = pytest.mark.any_major


def files_config(directory: Path, **extra: Any) -> Config:
    return parse_config(
        {
            "target_files": {"paths": [str(directory / "*.yaml"), str(directory / "*.json")]},
            "auth_modules": {
                "default": {"user": "exporter"},
                "replica": {"user": "ro", "database": "app"},
            },
            **extra,
        }
    )


def problems_of(config: Config) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        with_target_files(config)
    return caught.value.problems


def test_no_files_yet_is_no_targets_yet(tmp_path: Path) -> None:
    assert with_target_files(files_config(tmp_path)).targets == ()


def test_our_entries_and_file_sd_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHE_TEST_PW", "from-env")
    (tmp_path / "ours.yaml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "billing",
                    "dsn": "host=billing dbname=postgres",
                    "password": "${PGHE_TEST_PW}",
                },
                {
                    "name": "bouncer",
                    "type": "pgbouncer",
                    "dsn": "host=b port=6432 dbname=pgbouncer",
                },
            ]
        )
    )
    (tmp_path / "sd.json").write_text(
        json.dumps(
            [
                {"targets": ["db-1:5432", "db-2:5433/app"], "labels": {"env": "prod"}},
                {"targets": ["db-3:5432"], "labels": {"__param_auth_module": "replica"}},
            ]
        )
    )
    (tmp_path / "empty.yaml").write_text("")
    config = with_target_files(files_config(tmp_path))
    by_name = {t.name: t for t in config.targets}
    assert list(by_name) == ["billing", "bouncer", "db-1:5432", "db-2:5433/app", "db-3:5432"]
    assert by_name["billing"].secrets() == ["from-env"]
    assert by_name["bouncer"].type == "pgbouncer"
    assert by_name["db-2:5433/app"].dsn_params == {
        "host": "db-2",
        "port": "5433",
        "dbname": "app",
        "user": "exporter",
    }
    assert by_name["db-3:5432"].dsn_params["user"] == "ro"
    assert by_name["db-3:5432"].dsn_params["dbname"] == "app"


def test_configured_and_file_targets_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"targets": [{"name": "b", "dsn": "host=b"}]}))
    config = files_config(tmp_path, targets=[{"name": "a", "dsn": "host=a"}])
    assert [t.name for t in with_target_files(config).targets] == ["a", "b"]


def test_problems_name_the_file_and_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            [
                {"name": "x", "dsn": "host=x", "port": 5432},
                {"targets": ["db:99999"]},
                {"targets": ["db:5432"], "labels": {"auth_module": "nope"}},
                {"name": "dup", "dsn": "host=d"},
            ]
        )
    )
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump([{"name": "dup", "dsn": "host=d"}]))
    (tmp_path / "text.json").write_text('"not a list"')
    assert problems_of(files_config(tmp_path)) == [
        f"{bad}: 0.port: Extra inputs are not permitted",
        f"{bad}: 1.targets.0: target 'db:99999' is not HOST:PORT[/DATABASE] (a host name or an "
        "address, IPv6 in brackets; a database name of letters, digits and _.$-)",
        f"{bad}: 2.labels: no auth module 'nope' in auth_modules (default, replica)",
        f"{tmp_path / 'text.json'}: expected a list of targets or of file_sd groups",
        "target_files: target name(s) given twice (in the config or the files): dup",
    ]


def test_config_may_name_no_targets_with_target_files(tmp_path: Path) -> None:
    assert files_config(tmp_path).targets == ()
    with pytest.raises(ConfigError, match="refresh_interval: must be at least 1s"):
        parse_config({"target_files": {"paths": ["x"], "refresh_interval": "10ms"}})


def test_the_fingerprint_sees_files_come_change_and_go(tmp_path: Path) -> None:
    config = files_config(tmp_path)
    fingerprint = Fingerprint(config)
    assert not fingerprint.changed(config)
    target = tmp_path / "a.yaml"
    target.write_text("[]")
    assert fingerprint.changed(config)
    assert not fingerprint.changed(config)
    target.write_text("[] # same size? no: longer")
    assert fingerprint.changed(config)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert fingerprint.changed(config)
    target.unlink()
    assert fingerprint.changed(config)
    (tmp_path / "ignored.txt").write_text("not matched")
    assert not fingerprint.changed(config)


def test_a_target_file_with_a_password_readable_by_others_is_named(tmp_path: Path) -> None:
    written = tmp_path / "written.yaml"
    written.write_text(yaml.safe_dump([{"name": "a", "dsn": "host=a password=s3cret"}]))
    referenced = tmp_path / "referenced.yaml"
    referenced.write_text(yaml.safe_dump([{"name": "b", "dsn": "host=b", "password": "${PW}"}]))
    for path in (written, referenced):
        path.chmod(0o644)
    config = files_config(tmp_path)
    assert exposed_secret_files(config, None) == [(written, 0o644)]
    written.chmod(0o600)
    assert exposed_secret_files(config, None) == []
