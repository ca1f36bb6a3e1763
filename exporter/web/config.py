"""`--web.config.file`: TLS and basic auth in the Prometheus exporter-toolkit's file format.

The file a Go exporter already uses works here unchanged, so a deployment that secures its
exporters one way secures this one the same way. It is validated like config.yaml: unknown
keys are errors, and so are the toolkit's settings Python's ssl module cannot honour the way
Go does (they narrow who may connect; ignoring one silently would be a security hole).
Relative paths are read from the web config file's directory, as the toolkit does.
"""

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exporter.config import read_yaml
from exporter.errors import ConfigError, validation_problems
from exporter.web.basicauth import BasicAuth

ClientAuthType = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]

_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit settings that Python's ssl module cannot apply as Go does, and why.
_UNSUPPORTED = {
    "cipher_suites": "Go cipher suite names; pg-health-exporter uses OpenSSL's default ciphers",
    "curve_preferences": "pg-health-exporter uses OpenSSL's default curves",
    "cert": "give the certificate as cert_file",
    "key": "give the key as key_file",
    "client_ca": "give the client CA as client_ca_file",
}
_BCRYPT_HASH = re.compile(r"^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$")
# The response headers exporter-toolkit lets a web config set.
HeaderName = Literal[
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
]


class TLSServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: ClientAuthType = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    prefer_server_cipher_suites: bool = True
    cipher_suites: Any = None
    curve_preferences: Any = None
    cert: Any = None
    key: Any = None
    client_ca: Any = None

    @field_validator(*_UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, "", [], {}):  # left empty: as if absent
            raise ValueError(f"not supported: {_UNSUPPORTED[str(info.field_name)]}")
        return value

    @field_validator("client_auth_type")
    @classmethod
    def _verifiable(cls, value: str) -> str:
        if value not in _VERIFY_MODES:
            # Python's ssl module verifies every client certificate it asks for.
            raise ValueError(
                f"{value} is not supported (certificates would not be verified): use "
                "VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TLSServerConfig":
        verifying = self.client_auth_type != "NoClientCert"
        if verifying and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if self.client_allowed_sans and not verifying:
            raise ValueError("client_allowed_sans needs a client_auth_type that verifies")
        if _VERSIONS[self.min_version] > _VERSIONS[self.max_version]:
            raise ValueError("min_version must not be above max_version")
        return self


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("a header value must be one line")
    return value


class HTTPServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    http2: bool = True  # accepted for compatibility: this server speaks HTTP/1.1 only
    headers: dict[HeaderName, Annotated[str, AfterValidator(_header_value)]] = {}


def _bcrypt_hash(secret: SecretStr) -> SecretStr:
    if not _BCRYPT_HASH.match(secret.get_secret_value()):
        raise ValueError("not a bcrypt hash (e.g. from `htpasswd -nBC 10 USER`)")
    return secret


class WebConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, Annotated[SecretStr, AfterValidator(_bcrypt_hash)]] = {}

    @field_validator("basic_auth_users")
    @classmethod
    def _user_names(cls, users: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for user in users:
            if ":" in user:  # the basic auth header could never carry it
                raise ValueError(f"user name {user!r} contains ':'")
        return users


@dataclass(frozen=True)
class WebSecurity:
    """What the HTTP server applies to every connection and request."""

    tls: ssl.SSLContext | None = None
    allowed_sans: frozenset[str] = frozenset()
    auth: BasicAuth | None = None
    headers: tuple[tuple[str, str], ...] = ()


OPEN = WebSecurity()  # no web config file: plain HTTP, no authentication


def load_web_config(path: Path) -> WebSecurity:
    """Read, validate and apply a web config file; ConfigError names each problem's key."""
    raw = read_yaml(path)
    if raw is None:
        return OPEN
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: (top level): expected a mapping of settings"])
    try:
        config = WebConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            [f"{path}: {p}" for p in validation_problems(exc, model=WebConfig)]
        ) from None
    return security_from(config, base=path.parent, where=str(path))


def security_from(config: WebConfig, *, base: Path, where: str) -> WebSecurity:
    tls = None
    sans: frozenset[str] = frozenset()
    if config.tls_server_config is not None:
        tls = _tls_context(config.tls_server_config, base, where)
        sans = frozenset(config.tls_server_config.client_allowed_sans)
    auth = None
    if config.basic_auth_users:
        auth = BasicAuth(
            {u: h.get_secret_value().encode() for u, h in config.basic_auth_users.items()}
        )
    headers = tuple(config.http_server_config.headers.items())
    return WebSecurity(tls=tls, allowed_sans=sans, auth=auth, headers=headers)


def _tls_context(tls: TLSServerConfig, base: Path, where: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.maximum_version = _VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    cert, key = base / tls.cert_file, base / tls.key_file
    try:
        # An encrypted key would make OpenSSL prompt on the terminal; a daemon must fail.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [f"{where}: tls_server_config.cert_file: cannot load {cert} with {key}: {_why(exc)}"]
        ) from None
    if tls.client_ca_file is not None:
        ca = base / tls.client_ca_file
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [f"{where}: tls_server_config.client_ca_file: cannot load {ca}: {_why(exc)}"]
            ) from None
    context.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)
