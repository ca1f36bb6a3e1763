"""/probe without a server: addresses, the allow-list, auth modules, the ledger of probed
targets (cap, idle, reload) and one target's body from the store."""

import gzip
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.config import Config, TargetConfig, parse_config
from exporter.errors import ConfigError, ProbeRefused
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.status import Reachability
from exporter.targets.probeaddress import Address, allowed, parse_address, probe_target
from exporter.targets.probed import ProbedTargets
from support import parse_exposition, value

pytestmark = pytest.mark.any_major

MODULES = {"default": {"user": "exporter", "password": "s3cret"}, "ro": {"user": "ro"}}


def probing(**probe: Any) -> Config:
    return parse_config(
        {"probe": {"allow": ["db-*.internal", "10.0.0.0/8"], **probe}, "auth_modules": MODULES}
    )


def problems_of(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return caught.value.problems


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("db-1.internal:5432", Address("db-1.internal", 5432, None)),
        ("db-1.internal:6432/app_1", Address("db-1.internal", 6432, "app_1")),
        ("10.1.2.3", Address("10.1.2.3", 5432, None)),
        ("[fd00::1]:5433/x", Address("fd00::1", 5433, "x")),
    ],
)
def test_addresses(raw: str, address: Address) -> None:
    assert parse_address(raw) == address


@pytest.mark.parametrize(
    "raw",
    ["", "db:0", "db:70000", "db:5432/a b", "user@db:5432", "db:5432?sslmode=disable", "[zz]:1"],
)
def test_what_is_not_an_address(raw: str) -> None:
    with pytest.raises(ProbeRefused) as refused:
        parse_address(raw)
    assert refused.value.status == 400


def test_the_allow_list_matches_names_by_pattern_and_addresses_by_cidr() -> None:
    patterns = ("db-*.internal", "10.0.0.0/8", "fd00::/8")
    assert allowed("DB-7.Internal", patterns)
    assert allowed("10.200.0.1", patterns)
    assert allowed("fd00::1", patterns)
    assert not allowed("db-7.internal.evil.com", patterns)
    assert not allowed("11.0.0.1", patterns)
    # A name is never resolved to be checked against a CIDR.
    assert not allowed("localhost", ("127.0.0.0/8",))


def test_probe_target_refusals_say_why() -> None:
    config = probing()
    refusals = {
        ("db-1.internal:5432", "nope"): 400,
        (None, None): 400,
        ("db-1.other:5432", None): 403,
        ("8.8.8.8:5432", None): 403,
    }
    for (target, module), status in refusals.items():
        with pytest.raises(ProbeRefused) as refused:
            probe_target(config, target, module)
        assert refused.value.status == status
    with pytest.raises(ProbeRefused, match=r"auth module 'nope' in auth_modules .*default, ro"):
        probe_target(config, "db-1.internal:5432", "nope")
    off = parse_config({"targets": [{"name": "a", "dsn": "host=x"}]})
    with pytest.raises(ProbeRefused, match=r"probe\.allow") as refused:
        probe_target(off, "db-1.internal:5432", None)
    assert refused.value.status == 404


def test_no_module_given_and_no_default_is_refused() -> None:
    config = parse_config({"probe": {"allow": ["*"]}, "auth_modules": {"ro": {"user": "ro"}}})
    with pytest.raises(ProbeRefused, match="no auth_module given and no `default`") as refused:
        probe_target(config, "db:5432", None)
    assert refused.value.status == 400


def test_a_probed_target_takes_its_module_and_the_address_and_is_named_by_it() -> None:
    config = parse_config(
        {
            "probe": {"allow": ["db-*.internal"]},
            "auth_modules": {
                "default": {
                    "user": "exporter",
                    "password": "s3cret",
                    "sslmode": "require",
                    "database": "app",
                    "connect_timeout": "2s",
                    "max_connections": 3,
                    "options": {"target_session_attrs": "read-write"},
                }
            },
        }
    )
    target = probe_target(config, "db-1.internal:6432", None)
    assert target.name == "db-1.internal:6432"
    assert target.dsn_params == {
        "host": "db-1.internal",
        "port": "6432",
        "dbname": "app",
        "user": "exporter",
        "sslmode": "require",
        "target_session_attrs": "read-write",
    }
    assert target.secrets() == ["s3cret"]
    assert (target.connect_timeout, target.max_connections) == (2.0, 3)
    assert probe_target(config, "db-1.internal:6432/other", None).dsn_params["dbname"] == "other"


def test_a_configured_target_name_cannot_be_probed() -> None:
    config = parse_config(
        {
            "targets": [{"name": "db-1.internal:5432", "dsn": "host=db-1.internal"}],
            "probe": {"allow": ["db-*.internal"]},
            "auth_modules": MODULES,
        }
    )
    with pytest.raises(ProbeRefused) as refused:
        probe_target(config, "db-1.internal:5432", None)
    assert refused.value.status == 409


def test_config_problems_name_the_key(tmp_path: Path) -> None:
    assert problems_of({"probe": {"allow": ["10.0.0.0/33"]}, "auth_modules": MODULES}) == [
        "probe.allow: '10.0.0.0/33' is not a CIDR"
    ]
    assert problems_of(
        {"probe": {"allow": ["a b"], "idle_timout": "1m"}, "auth_modules": MODULES}
    ) == [
        "probe.allow: 'a b' is neither a host pattern nor a CIDR",
        "probe.idle_timout: Extra inputs are not permitted (did you mean `idle_timeout`?)",
    ]
    assert problems_of({"probe": {"allow": ["*"]}}) == [
        "(top level): probe.allow is set but auth_modules is empty: /probe needs at least one "
        "auth module (its credentials; `default` is used when a probe names none)"
    ]
    modules: dict[str, Any] = {
        "default": {"options": {"host": "elsewhere", "sslrootcert": "/ca.pem"}}
    }
    assert problems_of({"probe": {"allow": ["*"]}, "auth_modules": modules}) == [
        "auth_modules.default.options: host: not an option here (the probe's target gives the "
        "server, `user`/`password`/`password_file` the login)"
    ]
    modules = {"default": {"options": {"sslmod": "require"}}}
    (problem,) = problems_of({"probe": {"allow": ["*"]}, "auth_modules": modules})
    assert problem.startswith("auth_modules.default.options: not libpq connection options")
    missing = tmp_path / "missing"
    unreadable = {"default": {"password_file": str(missing)}}
    assert problems_of({"probe": {"allow": ["*"]}, "auth_modules": unreadable}) == [
        f"auth_modules.default.password_file: cannot read {missing}: No such file or directory"
    ]
    # Without probe.allow there must be targets, as before.
    assert problems_of({"auth_modules": MODULES})[0].startswith("targets: none given")


def test_a_password_file_fills_the_module_password(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    config = parse_config(
        {"probe": {"allow": ["*"]}, "auth_modules": {"default": {"password_file": str(secret)}}}
    )
    assert config.secrets() == ["from-a-file"]
    assert probe_target(config, "db:5432", None).conninfo().endswith("password=from-a-file")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Daemon:
    """The add and remove calls ProbedTargets makes, recorded."""

    def __init__(self) -> None:
        self.targets: dict[str, TargetConfig] = {}

    def add(self, config: TargetConfig) -> None:
        assert config.name not in self.targets
        self.targets[config.name] = config

    def remove(self, name: str) -> None:
        del self.targets[name]


def test_the_first_probe_registers_later_ones_find_it() -> None:
    daemon, clock = Daemon(), Clock()
    probed = ProbedTargets(probing(), add=daemon.add, remove=daemon.remove, clock=clock)
    assert probed.probe("db-1.internal:5432", None) == ("db-1.internal:5432", True)
    assert probed.probe("db-1.internal:5432", None) == ("db-1.internal:5432", False)
    assert list(daemon.targets) == ["db-1.internal:5432"]
    with pytest.raises(ProbeRefused, match="probed with auth module 'default'") as refused:
        probed.probe("db-1.internal:5432", "ro")
    assert refused.value.status == 409


def test_the_cap_refuses_new_targets_until_one_is_dropped() -> None:
    daemon, clock = Daemon(), Clock()
    config = probing(max_targets=2, idle_timeout="1m")
    probed = ProbedTargets(config, add=daemon.add, remove=daemon.remove, clock=clock)
    probed.probe("db-1.internal:5432", None)
    probed.probe("db-2.internal:5432", None)
    with pytest.raises(ProbeRefused, match=r"probe\.max_targets") as refused:
        probed.probe("db-3.internal:5432", None)
    assert refused.value.status == 503
    probed.probe("db-1.internal:5432", None)  # known targets are still served
    clock.now += 30
    probed.probe("db-1.internal:5432", None)
    clock.now += 31  # db-2 unasked for 61 s, db-1 for 31 s
    assert probed.drop_idle() == ["db-2.internal:5432"]
    assert list(daemon.targets) == ["db-1.internal:5432"]
    assert probed.probe("db-3.internal:5432", None) == ("db-3.internal:5432", True)


def test_a_reload_keeps_probed_targets_it_does_not_change() -> None:
    daemon = Daemon()
    probed = ProbedTargets(probing(), add=daemon.add, remove=daemon.remove)
    for target in ("db-1.internal:5432", "db-2.internal:5432", "10.0.0.1:5432"):
        probed.probe(target, None)
    probed.probe("db-3.internal:5432", "ro")
    reloaded = parse_config(
        {
            "targets": [{"name": "db-2.internal:5432", "dsn": "host=db-2.internal"}],
            "probe": {"allow": ["db-*.internal"]},  # 10.0.0.0/8 no longer
            "auth_modules": {**MODULES, "ro": {"user": "another"}},
        }
    )
    gone = probed.apply(reloaded)
    assert sorted(gone) == ["10.0.0.1:5432", "db-2.internal:5432", "db-3.internal:5432"]
    assert probed.names() == ["db-1.internal:5432"]
    assert probed.apply(parse_config({"targets": [{"name": "a", "dsn": "host=a"}]})) == [
        "db-1.internal:5432"
    ]


def test_one_targets_body_from_the_store() -> None:
    store = Store(self_metrics=self_metrics)
    store.publish_target("a", Reachability(pending=True, message="connecting", seq=1))
    store.publish_target("b", Reachability(up=True, seq=2))
    assert store.target_snapshot("nobody") is None
    first = store.target_snapshot("a")
    assert first is not None and store.target_snapshot("a") is first
    samples = parse_exposition(first.body.decode())
    assert value(samples, "pg_up", target="a") == 0
    assert value(samples, "pg_exporter_target_pending", target="a") == 1
    assert value(samples, "pg_up", target="b") is None
    assert gzip.decompress(first.gzipped()) == first.body
    store.publish_target("a", Reachability(up=True, seq=3))
    again = store.target_snapshot("a")
    assert again is not None and again is not first
    samples = parse_exposition(again.body.decode())
    assert value(samples, "pg_exporter_target_pending", target="a") == 0
    assert value(samples, "pg_up", target="a") == 1


def test_check_config_exits_2_naming_the_probe_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(
        "probe:\n  allow: ['10.0.0.0/40']\n  max_targets: 0\n"
        "auth_modules:\n  default:\n    password: Sup3rSecret\n    sslmod: require\n"
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "probe.allow: '10.0.0.0/40' is not a CIDR" in err
    assert "probe.max_targets: Input should be greater than or equal to 1" in err
    assert (
        "auth_modules.default.sslmod: Extra inputs are not permitted (did you mean `sslmode`?)"
        in err
    )
    assert "Sup3rSecret" not in err
    path.write_text("probe:\n  allow: ['*.internal']\nauth_modules:\n  default: {user: x}\n")
    assert main(["check-config", "--config", str(path)]) == 0
    assert "config OK: 0 target(s)" in capsys.readouterr().out
