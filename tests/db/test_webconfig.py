"""--web.config.file: TLS, client certificates and basic auth, over real HTTPS connections."""

import base64
import http.client
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from exporter.app import Exporter
from exporter.cli import main
from exporter.demo.embedded import LocalPostgres
from exporter.errors import ConfigError
from exporter.web.basicauth import BasicAuth
from exporter.web.config import WebSecurity, load_web_config
from support import exporter_config, parse_exposition, value, wait_for
from support.certs import Authority, Issued

PASSWORD = "scrape-Pa55"
# Cost 4, the lowest: the tests check behaviour, and each bcrypt check then takes ~1 ms.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()

# Nothing here depends on the PostgreSQL major: make test-majors skips it.
pytestmark = pytest.mark.any_major


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory, "ours")
    rogue = Authority(directory, "rogue")
    return {
        "ca": ca,
        "server": ca.server(),
        "client": ca.client("prometheus"),
        "other_client": ca.client("someone-else"),
        "rogue_client": rogue.client("prometheus"),
    }


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def tls_section(pki: dict[str, Any], **extra: Any) -> dict[str, Any]:
    server: Issued = pki["server"]
    return {"cert_file": str(server.cert), "key_file": str(server.key), **extra}


@pytest.fixture
def serve(postgres: LocalPostgres) -> Iterator[Callable[[WebSecurity], int]]:
    """An exporter on a real PostgreSQL with the given web security; returns its port."""
    started: list[Exporter] = []

    def start(web: WebSecurity) -> int:
        exporter = Exporter(
            exporter_config(postgres.dsn(), interval="1h"), listen_address="127.0.0.1:0", web=web
        )
        exporter.start()
        started.append(exporter)
        return exporter.server.port

    yield start
    for exporter in started:
        exporter.stop()


def client_context(pki: dict[str, Any], cert: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"].cert)
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def get(
    url: str, *, context: ssl.SSLContext | None = None, authorization: str | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def refused(url: str, context: ssl.SSLContext) -> bool:
    """True when the server ends the connection during or right after the TLS handshake."""
    try:
        get(url, context=context)
    except (urllib.error.URLError, ssl.SSLError, ConnectionError, http.client.HTTPException):
        return True
    return False


def test_basic_auth_over_tls(
    pki: dict[str, Any], serve: Callable[[WebSecurity], int], tmp_path: Path
) -> None:
    web = load_web_config(
        write(
            tmp_path / "web.yml",
            {"tls_server_config": tls_section(pki), "basic_auth_users": {"prometheus": HASH}},
        )
    )
    port = serve(web)
    url = f"https://127.0.0.1:{port}/metrics"
    context = client_context(pki)

    status, _ = get(url, context=context)
    assert status == 401
    assert get(url, context=context, authorization=basic("prometheus", "wrong"))[0] == 401
    assert get(url, context=context, authorization=basic("nobody", PASSWORD))[0] == 401
    assert get(url, context=context, authorization="Basic !!notbase64")[0] == 401

    def collected() -> bool:
        status, body = get(url, context=context, authorization=basic("prometheus", PASSWORD))
        assert status == 200
        return value(parse_exposition(body.decode()), "pg_up", target="pg") == 1

    wait_for(collected, what="pg_up over HTTPS with basic auth")
    # As exporter-toolkit does, every path is protected, /healthz and the pages too.
    for path in ("/healthz", "/", "/health", "/health.json"):
        assert get(f"https://127.0.0.1:{port}{path}", context=context)[0] == 401
        status, _ = get(
            f"https://127.0.0.1:{port}{path}",
            context=context,
            authorization=basic("prometheus", PASSWORD),
        )
        assert status == 200

    # Plain HTTP on the TLS port is refused with a 400 and no data.
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 400
    assert b"pg_up" not in body
    # The right password was checked with bcrypt once, then served from the cache.
    assert web.auth is not None
    checks = web.auth.bcrypt_checks
    for _ in range(5):
        assert get(url, context=context, authorization=basic("prometheus", PASSWORD))[0] == 200
    assert web.auth.bcrypt_checks == checks


def test_client_certificate_required(
    pki: dict[str, Any], serve: Callable[[WebSecurity], int], tmp_path: Path
) -> None:
    tls = tls_section(
        pki, client_ca_file=str(pki["ca"].cert), client_auth_type="RequireAndVerifyClientCert"
    )
    port = serve(load_web_config(write(tmp_path / "web.yml", {"tls_server_config": tls})))
    url = f"https://127.0.0.1:{port}/healthz"

    assert refused(url, client_context(pki))  # no client certificate
    assert refused(url, client_context(pki, pki["rogue_client"]))  # signed by another CA
    assert get(url, context=client_context(pki, pki["client"])) == (200, b"ok\n")


def test_client_allowed_sans(
    pki: dict[str, Any], serve: Callable[[WebSecurity], int], tmp_path: Path
) -> None:
    tls = tls_section(
        pki,
        client_ca_file=str(pki["ca"].cert),
        client_auth_type="RequireAndVerifyClientCert",
        client_allowed_sans=["prometheus"],
    )
    port = serve(load_web_config(write(tmp_path / "web.yml", {"tls_server_config": tls})))
    url = f"https://127.0.0.1:{port}/healthz"

    assert refused(url, client_context(pki, pki["other_client"]))
    assert get(url, context=client_context(pki, pki["client"])) == (200, b"ok\n")


def test_relative_paths_and_security_headers(
    pki: dict[str, Any], serve: Callable[[WebSecurity], int]
) -> None:
    server: Issued = pki["server"]
    # Relative to the web config file's directory, as exporter-toolkit reads them.
    path = write(
        server.cert.parent / "web.yml",
        {
            "tls_server_config": {"cert_file": server.cert.name, "key_file": server.key.name},
            "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
        },
    )
    port = serve(load_web_config(path))
    request = urllib.request.Request(f"https://127.0.0.1:{port}/healthz")
    with urllib.request.urlopen(request, timeout=10, context=client_context(pki)) as response:
        assert response.headers["X-Frame-Options"] == "deny"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"tls_server_config": {"cert_fil": "x"}}, "tls_server_config.cert_fil: Extra inputs"),
        ({"tls_server_config": {"key_file": "k"}}, "tls_server_config.cert_file: Field required"),
        ({"basic_auth_user": {}}, "basic_auth_user: Extra inputs"),
        ({"basic_auth_users": {"p": "plaintext"}}, "basic_auth_users.p: not a bcrypt hash"),
        ({"basic_auth_users": {"a:b": HASH}}, "basic_auth_users: user name 'a:b'"),
        (
            {"tls_server_config": {"cert_file": "c", "key_file": "k", "cipher_suites": ["X"]}},
            "tls_server_config.cipher_suites: not supported",
        ),
        (
            {
                "tls_server_config": {
                    "cert_file": "c",
                    "key_file": "k",
                    "client_auth_type": "RequireAnyClientCert",
                }
            },
            "tls_server_config.client_auth_type: RequireAnyClientCert is not supported",
        ),
        (
            {
                "tls_server_config": {
                    "cert_file": "c",
                    "key_file": "k",
                    "client_auth_type": "RequireAndVerifyClientCert",
                }
            },
            "tls_server_config: client_auth_type RequireAndVerifyClientCert needs client_ca_file",
        ),
        (
            {"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "TLS14"}},
            "tls_server_config.min_version: Input should be",
        ),
        (
            {"http_server_config": {"headers": {"Server": "x"}}},
            "http_server_config.headers.Server",
        ),
        (
            {"tls_server_config": {"cert_file": "missing.pem", "key_file": "missing-key.pem"}},
            "tls_server_config.cert_file: cannot load",
        ),
        ([1], "(top level): expected a mapping"),
    ],
)
def test_bad_web_config_names_the_key(
    document: Any, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert any(expected in p for p in caught.value.problems), caught.value.problems
    # The command line says the same and exits 2.
    config = tmp_path / "config.yaml"
    config.write_text("targets: [{name: x, dsn: 'host=x'}]\n")
    assert main(["check-config", "--config", str(config), "--web.config.file", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_hashes_never_in_messages(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", {"basic_auth_users": {"p": "$2b$10$short"}})
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert "$2b$10$short" not in str(caught.value)


def test_empty_file_is_plain_http(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("")
    web = load_web_config(path)
    assert web.tls is None and web.auth is None


def test_cache_keeps_only_successes() -> None:
    auth = BasicAuth({"prometheus": HASH.encode()})
    assert auth.allows(basic("prometheus", PASSWORD))
    assert auth.allows(basic("prometheus", PASSWORD))
    assert auth.bcrypt_checks == 1
    for _ in range(3):
        assert not auth.allows(basic("prometheus", "guess"))
    assert auth.bcrypt_checks == 4  # each wrong guess paid for bcrypt
    assert not auth.allows(basic("stranger", PASSWORD))  # an unknown user costs a check too
    assert auth.bcrypt_checks == 5
    assert not auth.allows(basic("prometheus", "x" * 100))  # beyond bcrypt's 72 bytes
    assert not auth.allows(None)
    assert not auth.allows("Bearer abc")
