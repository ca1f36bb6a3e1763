"""What a `/probe` request asks for, checked: the address, the allow-list, the auth module.

Nothing here connects or resolves a name: a host pattern matches the host as written, a CIDR
only a host written as an address. So an allow-list of `10.0.0.0/8` cannot be passed by a
name that resolves there, nor by one that resolves elsewhere.
"""

import ipaddress
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from exporter.config import Config, ProbedTargetConfig
from exporter.errors import ProbeRefused

DEFAULT_MODULE = "default"
DEFAULT_PORT = 5432
_ADDRESS = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_.-]*)"
    r"(?::(?P<port>[0-9]{1,5}))?(?:/(?P<dbname>[A-Za-z0-9_.$-]+))?$"
)


@dataclass(frozen=True)
class Address:
    host: str  # an IPv6 address without its brackets
    port: int
    dbname: str | None


def parse_address(raw: str) -> Address:
    """`HOST[:PORT][/DB]`, IPv6 in brackets; ProbeRefused (400) otherwise."""
    match = _ADDRESS.match(raw)
    port = int(match.group("port") or DEFAULT_PORT) if match else 0
    if match is None or not 0 < port < 65536:
        raise ProbeRefused(
            400,
            f"target {raw!r} is not HOST:PORT[/DATABASE] (a host name or an address, IPv6 in "
            "brackets; a database name of letters, digits and _.$-)",
        )
    host = match.group("host")
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ProbeRefused(400, f"target {raw!r}: {host} is not an IPv6 address") from None
    return Address(host, port, match.group("dbname"))


def allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether `probe.allow` lets `host` be probed."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for pattern in patterns:
        if "/" in pattern:
            if address is not None and address in ipaddress.ip_network(pattern, strict=False):
                return True
        elif fnmatchcase(host.lower(), pattern.lower()):
            return True
    return False


def probe_target(config: Config, target: str | None, module: str | None) -> ProbedTargetConfig:
    """The target a probe asks for, monitored with its auth module's settings; ProbeRefused
    with the status and the reason when it may not be probed."""
    if not config.probe.enabled:
        raise ProbeRefused(
            404, "/probe is off: list the hosts it may reach in probe.allow in the config file"
        )
    if not target:
        raise ProbeRefused(400, "no target: /probe?target=HOST:PORT[/DATABASE]")
    address = parse_address(target)
    if not allowed(address.host, config.probe.allow):
        raise ProbeRefused(403, f"target {target!r} is not allowed by probe.allow")
    name = module or DEFAULT_MODULE
    found = config.auth_modules.get(name)
    if found is None:
        known = ", ".join(sorted(config.auth_modules))
        wanted = f"auth module {name!r}" if module else "no auth_module given and no `default`"
        raise ProbeRefused(400, f"{wanted} in auth_modules (configured: {known})")
    if any(t.name == target for t in config.targets):
        raise ProbeRefused(409, f"target {target!r} is the name of a configured target")
    return found.target(target, address.host, address.port, address.dbname)
