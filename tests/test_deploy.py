"""The deployment files agree with the server's real configuration.

Dockerfile, deploy/compose.yaml and deploy/kubernetes/ repeat ports, variable names, the
health check and the shutdown timing of the server. These tests read those files and compare
them with ``memstore_server.config``, so the two cannot drift apart; the last ones run
hadolint and kubernetes-validate when the dev install has them.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from memstore_server import config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "compose.yaml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
# The virtualenv's bin/, where the dev install puts hadolint and kubernetes-validate.
BIN = Path(sys.executable).parent

GRPC_PORT = int(config.DEFAULT_LISTEN.rpartition(":")[2])
# Prometheus metrics (--metrics-listen / MEMSTORE_METRICS_LISTEN); off unless set.
METRICS_PORT = 9464
HEALTHCHECK_COMMAND = ["memstore-server", "healthcheck"]
SERVER_SERVICE = "memstore"
SERVER_CONTAINER = "memstore"
WILDCARD_HOSTS = ("0.0.0.0", "[::]")


def port_of(address: str) -> int:
    """The port of a ``HOST:PORT`` address."""
    return int(address.rpartition(":")[2])


def host_of(address: str) -> str:
    return address.rpartition(":")[0]


def default_grace_period() -> float:
    """The --grace-period default, as the command line declares it."""
    return config.Settings().grace_period


def grace_period(environment: Mapping[str, str]) -> float:
    """The grace period a server with ``environment`` uses."""
    value = environment.get(config.OPTIONS["grace_period"].env)
    return float(value) if value else default_grace_period()


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage: the image that runs."""
    instructions = dockerfile_instructions()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in final_stage():
        if keyword != "ENV":
            continue
        words = shlex.split(arguments)
        if "=" not in words[0]:  # the legacy `ENV NAME value` form
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            env[name] = value
    return env


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on the shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array): {arguments}")
    assert isinstance(value, list), arguments
    assert all(isinstance(item, str) for item in value), arguments
    return [str(item) for item in value]


def single(keyword: str) -> str:
    """The arguments of the one ``keyword`` instruction of the final stage."""
    found = [arguments for kw, arguments in final_stage() if kw == keyword]
    assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {len(found)}"
    return found[0]


def test_dockerfile_listens_on_the_grpc_port_on_every_interface() -> None:
    listen = dockerfile_env()["MEMSTORE_LISTEN"]
    assert port_of(listen) == GRPC_PORT
    assert host_of(listen) in WILDCARD_HOSTS, "a container must listen beyond its loopback"


def test_dockerfile_exposes_the_grpc_and_metrics_ports() -> None:
    exposed = {
        int(port.split("/")[0])
        for keyword, arguments in final_stage()
        if keyword == "EXPOSE"
        for port in arguments.split()
    }
    assert exposed == {GRPC_PORT, METRICS_PORT}
    metrics = dockerfile_env().get("MEMSTORE_METRICS_LISTEN")
    if metrics is not None:
        assert port_of(metrics) == METRICS_PORT


def test_dockerfile_healthcheck_asks_the_grpc_health_service() -> None:
    arguments = single("HEALTHCHECK")
    words = arguments.split()
    assert "CMD" in words, f"HEALTHCHECK without CMD: {arguments}"
    command = arguments.split("CMD", 1)[1].strip()
    assert exec_form(command) == HEALTHCHECK_COMMAND


def test_dockerfile_entrypoint_is_exec_form_so_the_server_gets_sigterm() -> None:
    assert exec_form(single("ENTRYPOINT")) == ["memstore-server"]
    assert exec_form(single("CMD")) == ["serve"]


def dockerfile_uid() -> int:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the image runs as root: no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: use a numeric id, which runAsNonRoot can verify"
    return int(user)


def test_dockerfile_runs_as_non_root() -> None:
    assert dockerfile_uid() != 0


def test_dockerfile_stages_share_one_tagged_base_image() -> None:
    froms = [arguments.split() for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    stages = {words[-1] for words in froms if len(words) == 3 and words[1].upper() == "AS"}
    bases = {words[0] for words in froms} - stages
    assert len(bases) == 1, f"build and run stages differ: {bases}"
    (base,) = bases
    assert ":" in base, f"{base}: pin a tag"
    assert not base.endswith(":latest"), f"{base}: pin a tag other than latest"


def test_dockerfile_builds_from_the_committed_stubs() -> None:
    text = "\n".join(arguments for _, arguments in dockerfile_instructions())
    for generator in ("grpcio-tools", "grpc_tools", "generate_protos", "protoc"):
        assert generator not in text, f"the image must not generate code ({generator})"
    sources = {arguments.split()[0] for keyword, arguments in dockerfile_instructions() if keyword == "COPY"}
    assert "protos/" not in sources, "the image builds from the committed stubs, not from protos/"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore pattern excludes ``path`` or a folder above it (no ! rules)."""
    parts = path.strip("/").split("/")
    for pattern in patterns:
        for depth in range(1, len(parts) + 1):
            candidate = "/".join(parts[:depth])
            if fnmatch.fnmatch(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatch(parts[depth - 1], pattern[3:]):
                return True
    return False


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(pattern.startswith("!") for pattern in patterns), "this check knows no ! rules"
    sources = [
        source
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and "--from" not in arguments
        for source in arguments.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert not ignored(source, patterns), f".dockerignore excludes {source}, which the image needs"


# ---------------------------------------------------------------- compose


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def compose_service(name: str) -> dict[str, Any]:
    service = load_yaml(COMPOSE)["services"][name]
    assert isinstance(service, dict)
    return service


def compose_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A compose service's environment, from either its mapping or its list form."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return {name: value for name, _, value in (str(item).partition("=") for item in environment)}
    return {str(name): str(value) for name, value in environment.items()}


def container_ports(service: Mapping[str, Any]) -> set[int]:
    """The container side of a compose service's published ports, short or long syntax."""
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def seconds(duration: str | int | float) -> float:
    """A compose duration (``1m30s``, ``20s``, or a bare number of seconds) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(number + unit for number, unit in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_serves_grpc_and_metrics_on_the_configured_ports() -> None:
    service = compose_service(SERVER_SERVICE)
    environment = compose_environment(service)
    listen = environment.get("MEMSTORE_LISTEN") or dockerfile_env()["MEMSTORE_LISTEN"]
    assert port_of(listen) == GRPC_PORT
    assert host_of(listen) in WILDCARD_HOSTS
    assert port_of(environment["MEMSTORE_METRICS_LISTEN"]) == METRICS_PORT
    assert container_ports(service) == {GRPC_PORT, METRICS_PORT}


def test_compose_healthcheck_asks_the_grpc_health_service() -> None:
    test = compose_service(SERVER_SERVICE)["healthcheck"]["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *command = test
    if kind == "CMD-SHELL":
        command = shlex.split(" ".join(command))
    assert kind in ("CMD", "CMD-SHELL")
    assert command == HEALTHCHECK_COMMAND


def test_compose_waits_for_a_healthy_database_it_points_at() -> None:
    service = compose_service(SERVER_SERVICE)
    url = compose_environment(service)["MEMSTORE_DATABASE_URL"]
    database = urlsplit(url).hostname
    assert database in load_yaml(COMPOSE)["services"], f"{url}: not a compose service"
    assert service["depends_on"][database]["condition"] == "service_healthy"
    postgres = compose_service(str(database))
    assert postgres["healthcheck"]["test"], "the database needs a healthcheck to wait on"
    volumes = [str(volume).split(":")[0] for volume in postgres.get("volumes", [])]
    assert any(name in load_yaml(COMPOSE).get("volumes", {}) for name in volumes), "no named volume"


def test_compose_stop_timeout_outlasts_the_grace_period() -> None:
    service = compose_service(SERVER_SERVICE)
    # Docker's default is 10 s, which leaves no room after a 10 s grace period.
    assert "stop_grace_period" in service
    assert seconds(service["stop_grace_period"]) > grace_period(compose_environment(service))


# ---------------------------------------------------------------- Kubernetes


def kustomization_resources() -> list[Path]:
    resources = load_yaml(KUBERNETES / "kustomization.yaml")["resources"]
    return [KUBERNETES / str(name) for name in resources]


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object of deploy/kubernetes by kind (one of each is expected)."""
    found: dict[str, dict[str, Any]] = {}
    for path in kustomization_resources():
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            assert isinstance(document, dict)
            assert document["kind"] not in found, f"second {document['kind']} in {path.name}"
            found[document["kind"]] = document
    return found


def pod_spec() -> dict[str, Any]:
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def server_container() -> dict[str, Any]:
    (container,) = (c for c in pod_spec()["containers"] if c["name"] == SERVER_CONTAINER)
    assert isinstance(container, dict)
    return container


def container_env() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in server_container().get("env", [])}


def named_ports(ports: list[dict[str, Any]], key: str) -> dict[str, int]:
    return {port["name"]: int(port[key]) for port in ports}


def test_kustomization_lists_every_manifest() -> None:
    listed = {path.name for path in kustomization_resources()}
    present = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert set(manifests()) == {"Deployment", "Service", "PodDisruptionBudget"}


def test_deployment_listens_on_the_configured_ports() -> None:
    env = container_env()
    listen = env["MEMSTORE_LISTEN"]["value"]
    assert port_of(listen) == GRPC_PORT
    assert host_of(listen) in WILDCARD_HOSTS
    assert port_of(env["MEMSTORE_METRICS_LISTEN"]["value"]) == METRICS_PORT
    ports = named_ports(server_container()["ports"], "containerPort")
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}


def test_deployment_takes_the_database_url_from_a_secret() -> None:
    entry = container_env()["MEMSTORE_DATABASE_URL"]
    assert "value" not in entry, "the database URL (with its password) must not be a literal"
    reference = entry["valueFrom"]["secretKeyRef"]
    assert reference["name"]
    assert reference["key"]


def test_deployment_probes_are_grpc_health_checks_on_the_grpc_port() -> None:
    container = server_container()
    assert "livenessProbe" in container
    assert "readinessProbe" in container
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        if name not in container:
            continue
        probe = container[name]
        handlers = {"grpc", "exec", "httpGet", "tcpSocket"} & set(probe)
        assert handlers == {"grpc"}, f"{name}: use the native grpc probe, not {handlers}"
        assert probe["grpc"]["port"] == GRPC_PORT, name
        # The server reports its health for "" and for each service; "" is the whole server.
        assert probe["grpc"].get("service", "") == "", name


def test_deployment_termination_outlasts_the_grace_period() -> None:
    container = server_container()
    environment = {name: str(entry.get("value", "")) for name, entry in container_env().items()}
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    pre_stop_seconds = float(pre_stop.get("sleep", {}).get("seconds", 0))
    budget = pod_spec()["terminationGracePeriodSeconds"]
    assert budget > pre_stop_seconds + grace_period(environment)


def test_deployment_requests_resources() -> None:
    requests = server_container()["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)


def test_deployment_runs_as_the_images_non_root_user() -> None:
    context = {**pod_spec().get("securityContext", {}), **server_container().get("securityContext", {})}
    assert context.get("runAsNonRoot") is True
    assert context.get("runAsUser", dockerfile_uid()) == dockerfile_uid()
    assert context.get("allowPrivilegeEscalation") is False


def test_service_routes_grpc_and_metrics_to_the_pods() -> None:
    service = manifests()["Service"]["spec"]
    assert named_ports(service["ports"], "port") == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    container_ports_by_name = named_ports(server_container()["ports"], "containerPort")
    for port in service["ports"]:
        target = port.get("targetPort", port["port"])
        resolved = container_ports_by_name[target] if isinstance(target, str) else target
        assert resolved == container_ports_by_name[port["name"]], port["name"]
    labels = manifests()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()


def test_disruption_budget_covers_the_pods() -> None:
    deployment = manifests()["Deployment"]["spec"]
    selector = manifests()["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["template"]["metadata"]["labels"].items()
    assert selector == deployment["selector"]["matchLabels"]
    assert deployment["replicas"] >= 2, "one replica leaves a disruption budget nothing to keep"


# ---------------------------------------------------------------- every file


DEPLOYMENT_FILES = [DOCKERFILE, COMPOSE, *sorted(KUBERNETES.glob("*.yaml")), ROOT / "deploy" / "README.md"]


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_memstore_variable_is_a_server_setting(path: Path) -> None:
    named = set(re.findall(r"\bMEMSTORE_[A-Z0-9_]+\b", path.read_text()))
    unknown = sorted(named - config.ENVIRONMENT_VARIABLES)
    assert not unknown, f"{path.name} names variables the server does not read: {unknown}"


# ---------------------------------------------------------------- the README's configuration table


def readme_settings() -> dict[str, tuple[str, str]]:
    """Flag -> (variable cell, default cell) of every row of the README's configuration table."""
    rows: dict[str, tuple[str, str]] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("| `--"):
            continue
        flags, variables, default = (cell.strip() for cell in line.strip("|").split("|")[:3])
        for flag in re.findall(r"`(--[a-z-]+)`", flags):
            rows[flag] = (variables, default)
    return rows


def test_the_readme_lists_every_setting_with_its_variable_and_default() -> None:
    rows = readme_settings()
    assert sorted(rows) == sorted(option.flag for option in config.OPTIONS.values())
    for name, option in config.OPTIONS.items():
        variables, default = rows[option.flag]
        assert f"`{option.env}`" in variables, option.flag
        shown = config.default_text(name)
        assert default == (f"`{shown}`" if shown else "unset"), option.flag


# ---------------------------------------------------------------- linters


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (dev extra)")
    return path


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_hadolint_passes() -> None:
    result = run([str(tool("hadolint")), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    command = [str(tool("kubernetes-validate")), "--strict", *map(str, kustomization_resources())]
    result = run(command)
    assert result.returncode == 0, result.stdout + result.stderr
