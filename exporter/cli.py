"""Command line, Prometheus style.

pg-health-exporter [--config FILE] [--web.listen-address HOST:PORT] [--web.config.file FILE]
                   [--web.telemetry-path PATH] [--log.level LEVEL] [--log.format logfmt|json]
                   [--[no-]collector.NAME ...]
(--config.file is --config spelled as Prometheus spells it; --log.level warn is warning.)
pg-health-exporter check-config [--config FILE] [--web.config.file FILE]
pg-health-exporter once [--config FILE]
pg-health-exporter report [--config FILE] [--target NAME] [--format text|markdown|json]
pg-health-exporter demo [--web.listen-address HOST:PORT] [--data-dir DIR]
"""

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from exporter import __version__
from exporter.allocator import return_large_buffers_promptly
from exporter.app import Exporter
from exporter.catalogue import CollectorSpec, builtin_specs
from exporter.collection import run_once
from exporter.config import DEFAULT_LISTEN_ADDRESS, Config
from exporter.datasource import load
from exporter.errors import ConfigError
from exporter.gocompat import load_mapping
from exporter.logs import setup
from exporter.secretfiles import exposed_secret_files
from exporter.signals import wait_for_signal
from exporter.targets.files import Fingerprint, with_target_files
from exporter.units import check_listen_address
from exporter.web.config import OPEN, WebSecurity, load_web_config
from exporter.web.server import METRICS_PATH, check_metrics_path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("exporter")


def _parser(command: str) -> argparse.ArgumentParser:
    prog = "pg-health-exporter" + ("" if command == "run" else f" {command}")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.fill(_DESCRIPTIONS[command] + _subcommand_names(command), width=90),
        epilog=_subcommands() if command == "run" else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if command != "demo":
        parser.add_argument(
            "--config",
            "--config.file",  # the Prometheus tools' spelling
            dest="config",
            type=Path,
            help="config file; without one, or when it names no targets, one target from "
            "DATA_SOURCE_NAME, or DATA_SOURCE_URI with DATA_SOURCE_USER and DATA_SOURCE_PASS "
            "(or their _FILE variants), as the Go postgres_exporter reads them",
        )
    if command in ("run", "demo"):
        parser.add_argument(
            "--web.listen-address",
            dest="listen_address",
            help=f"address to serve /metrics on (default: {DEFAULT_LISTEN_ADDRESS}, "
            "or listen_address from the config)",
        )
    if command == "run":
        parser.add_argument(
            "--web.telemetry-path",
            dest="telemetry_path",
            default=METRICS_PATH,
            metavar="PATH",
            help=f"path to serve the metrics on (default: {METRICS_PATH})",
        )
    if command in ("run", "check-config"):
        parser.add_argument(
            "--web.config.file",
            dest="web_config_file",
            type=Path,
            help="TLS and basic auth, in the Prometheus exporter-toolkit web config format",
        )
    if command == "demo":
        parser.add_argument(
            "--data-dir", type=Path, help="keep the demo database here (default: a temporary dir)"
        )
    if command == "report":
        from exporter.report.format import FORMATS  # noqa: PLC0415 (the daemon does without)

        parser.add_argument("--target", help="report on this target only (default: all)")
        parser.add_argument("--format", choices=FORMATS, default="text", help="default: text")
    parser.add_argument(
        "--log.level",
        dest="log_level",
        # The report is the output; the collection's progress lines would only be noise.
        default="warning" if command == "report" else "info",
        # `warn` is the Go exporters' spelling (promlog); it means the same.
        type=lambda level: "warning" if level == "warn" else level,
        choices=["debug", "info", "warning", "error"],
        metavar="{debug,info,warn,warning,error}",
    )
    parser.add_argument(
        "--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"]
    )
    if command in ("run", "once", "report"):
        # Ours, then the Go exporter's names where one of ours covers theirs (docs/migrating-...).
        switches = {
            name: (name, f"enable or disable the {name} collector") for name in builtin_specs()
        }
        for theirs, ours in load_mapping().collector_flags().items():
            switches[theirs] = (ours, f"postgres_exporter's name for --[no-]collector.{ours}")
        for flag, (ours, help_text) in switches.items():
            parser.add_argument(
                f"--collector.{flag}",
                dest=f"collector_{ours}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


_DESCRIPTIONS = {
    "run": "Prometheus exporter for PostgreSQL health: collects in the background, serves "
    "/metrics from memory.",
    "check-config": "Validate the configuration without connecting; exit 2 on any problem.",
    "once": "Run every collector once against every target and print the exposition.",
    "demo": "Start an embedded PostgreSQL and serve the exporter against it.",
    "report": "Collect once from every target and judge the result against documented "
    "thresholds; exit 1 when any finding is critical (docs/report.md).",
}


def _subcommand_names(command: str) -> str:
    if command != "run":
        return ""
    names = ", ".join(name for name in _COMMANDS if name != "run")
    return f" Subcommands: {names}, described at the end."


def _subcommands() -> str:
    """The subcommands, each with its description, for the daemon's --help."""
    width = max(len(name) for name in _COMMANDS)
    lines = [
        f"  {name:<{width}}  {_DESCRIPTIONS[name].split(';')[0].split(': ')[0].rstrip('.')}"
        for name in _COMMANDS
        if name != "run"
    ]
    return "subcommands (pg-health-exporter SUBCOMMAND --help for each):\n" + "\n".join(lines)


def _load(args: argparse.Namespace) -> Config:
    config = with_target_files(load(args.config))
    switches = {
        name: getattr(args, f"collector_{name}")
        for name in builtin_specs()
        if getattr(args, f"collector_{name}", None) is not None
    }
    if not switches:
        return config
    catalogue = tuple(
        c.model_copy(update={"spec": _with_enabled(c.spec, switches[c.name])})
        if c.name in switches
        else c
        for c in config.catalogue
    )
    return config.model_copy(update={"catalogue": catalogue})


def _with_enabled(spec: CollectorSpec, enabled: bool) -> CollectorSpec:
    return spec.model_copy(update={"enabled": enabled})


def _web(args: argparse.Namespace) -> WebSecurity:
    return load_web_config(args.web_config_file) if args.web_config_file else OPEN


def _reloaded(args: argparse.Namespace) -> tuple[Config, WebSecurity]:
    config, web = _load(args), _web(args)
    _warn_exposed(config, args.config)
    return config, web


def _warn_exposed(config: Config, path: Path | None) -> None:
    for exposed, mode in exposed_secret_files(config, path):
        log.warning(
            "file holding a password is readable by group or others",
            extra={"path": str(exposed), "mode": f"{mode:04o}"},
        )


def _secrets(config: Config) -> list[str]:
    return config.secrets()


def _check_listen(address: str, source: str) -> None:
    try:
        check_listen_address(address)
    except ValueError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None


def _run(args: argparse.Namespace) -> int:
    # The address first: a busy port fails at once, before the targets are even read.
    if args.listen_address:
        _check_listen(args.listen_address, "--web.listen-address")
    try:
        check_metrics_path(args.telemetry_path)
    except ValueError as exc:
        raise ConfigError([f"--web.telemetry-path: {exc}"]) from None
    config = _load(args)
    if not args.listen_address:
        _check_listen(config.listen_address, "listen_address")
    web = _web(args)
    setup(args.log_level, args.log_format, _secrets(config))
    _warn_exposed(config, args.config)
    # Rendering in a job holds the GIL; a shorter switch interval lets a scrape that arrives
    # meanwhile be served in a millisecond or two instead of waiting up to 5 ms per switch.
    sys.setswitchinterval(0.001)
    return_large_buffers_promptly()  # before the threads: see exporter.allocator
    exporter = Exporter(
        config, listen_address=args.listen_address, web=web, metrics_path=args.telemetry_path
    )
    exporter.start()
    log.info(
        "serving metrics",
        extra={
            "address": args.listen_address or config.listen_address,
            "path": args.telemetry_path,
            "tls": web.tls is not None,
            "basic_auth": web.auth is not None,
            "targets": ",".join(t.name for t in config.targets),
        },
    )
    # Target files are looked at every refresh_interval; a change reloads as SIGHUP does.
    files = Fingerprint(config)
    wait_for_signal(
        on_hangup=lambda: exporter.reload(lambda: _reloaded(args)),
        changed=lambda: files.changed(exporter.config),
        every=lambda: exporter.config.target_files.refresh_interval,
    )
    log.info("shutting down")
    exporter.stop()
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.web_config_file:
        load_web_config(args.web_config_file)
    enabled = [c.name for c in config.catalogue if c.spec.enabled]
    print(f"config OK: {len(config.targets)} target(s), collectors: {', '.join(enabled)}")
    return EXIT_OK


def _once(args: argparse.Namespace) -> int:
    config = _load(args)
    setup(args.log_level, args.log_format, _secrets(config))
    sys.stdout.buffer.write(run_once(config).body)
    sys.stdout.flush()
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    # Imported here: the daemon never loads the report's formatting.
    from exporter.report.build import build_report  # noqa: PLC0415
    from exporter.report.format import format_report, use_colour  # noqa: PLC0415

    config = _load(args)
    setup(args.log_level, args.log_format, _secrets(config))
    report = build_report(config, target=args.target)
    sys.stdout.write(format_report(report, args.format, colour=use_colour(sys.stdout)))
    sys.stdout.flush()
    return report.exit_code


def _demo(args: argparse.Namespace) -> int:
    # Imported here: the daemon never loads the demo, its workload or embedded PostgreSQL.
    from exporter.demo.demo import run_demo  # noqa: PLC0415

    listen_address = args.listen_address or "127.0.0.1:9188"
    # Before the embedded server and the demo's database are built.
    _check_listen(listen_address, "--web.listen-address")
    setup(args.log_level, args.log_format)
    return run_demo(listen_address=listen_address, data_dir=args.data_dir)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "check-config": _check_config,
    "once": _once,
    "demo": _demo,
    "report": _report,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in _COMMANDS else "run"
    args = _parser(command).parse_args(argv)
    try:
        return _COMMANDS[command](args)
    except ConfigError as exc:
        if len(exc.problems) == 1:  # one problem, one line
            print(f"configuration error: {exc.problems[0]}", file=sys.stderr)
            return EXIT_CONFIG
        print("configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
