"""The Kubernetes manifests (deploy/kubernetes/), rendered and validated offline.

Each Kustomize directory is rendered by ``kubectl kustomize`` (no cluster needed). Then:

- Kubernetes' own kinds (Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler) are checked
  against the Kubernetes OpenAPI schemas of ``kubernetes-validate``, strictly (an unknown field fails);
- KServe's ServingRuntime and InferenceService are built field by field into the KServe SDK's models
  (``kserve.models``: an unknown field, a wrong type or a missing required field fails);
- KEDA's ScaledObject and the Prometheus Operator's ServiceMonitor have no installable schema package:
  a hand-written check of the fields these manifests use, after their reference docs
  (https://keda.sh/docs/2.17/reference/scaledobject-spec/, https://keda.sh/docs/2.17/scalers/prometheus/,
  https://prometheus-operator.dev/docs/api-reference/api/#monitoring.coreos.com/v1.ServiceMonitor);
- the container arguments are parsed by pyserve's own ``serve`` parser, the shutdown budget is checked
  against them, and every PromQL query of the autoscalers parses and names metrics (and labels) that a
  live pyserve exports.

kubectl is on the project's machines; where it is missing the rendering tests skip, except in CI.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Repo, infer
from prometheus_client.parser import text_string_to_metric_families


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def need(module: str, package: str) -> Any:
    """``import module``; skips when it is missing, except in CI, which installs the test extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if _in_ci():
            pytest.fail(f"{package} is missing; CI installs it with the test extra")
        pytest.skip(f"pip install -e '.[test]' ({package})", allow_module_level=True)


yaml = need("yaml", "PyYAML")
promql_parser = need("promql_parser", "promql-parser")

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
DIRECTORIES = ["base", "overlays/hpa", "overlays/keda", "overlays/kserve"]
KINDS = {
    "base": {"Deployment", "Service", "PodDisruptionBudget"},
    "overlays/hpa": {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"},
    "overlays/keda": {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "ServiceMonitor"},
    "overlays/kserve": {"ServingRuntime", "InferenceService"},
}
OLDEST_KUBERNETES = "1.29.0"
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Secret"}
# Labels that Prometheus' Kubernetes service discovery adds to every series a ServiceMonitor scrapes.
TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}
# Secrets mounted by the components: name -> files the server reads from it.
SECRETS = {"pyserve-auth-tokens": {"tokens"}, "pyserve-tls": {"tls.crt", "tls.key"}}
FILE_FLAGS = ("auth_token_file", "inference_token_file", "tls_cert", "tls_key", "tls_client_ca")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if _in_ci():
            pytest.fail("kubectl is missing; CI's image has it (and .ci/run installs it when not)")
        pytest.skip("kubectl is missing: it renders the Kustomize directories (kubectl kustomize)")
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources of a Kustomize directory, as ``kubectl kustomize`` renders them."""
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(KUSTOMIZE / name) for name in DIRECTORIES}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The base with both secret components, as a user's overlay would compose them."""
    overlay = tmp_path_factory.mktemp("secured")
    up = os.path.relpath(KUSTOMIZE, overlay)  # kustomize refuses absolute paths to other directories
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {up}/base\ncomponents:\n  - {up}/components/auth\n  - {up}/components/tls\n")
    return render(overlay)


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def serve_args(args: list[str]) -> Any:
    """The container's arguments parsed by ``pyserve serve``'s own parser (argparse exits on a flag it
    does not know, which fails the test with its message)."""
    from pyserve.cli import make_parser

    assert args[0] == "serve", args
    try:
        return make_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"pyserve serve refuses the container's arguments {args} (its message is in the captured stderr)")


# ---------------------------------------------------------------------------------------------
# Rendering and schemas

@pytest.mark.parametrize("name", DIRECTORIES)
def test_each_directory_renders_its_resources(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    assert {d["kind"] for d in rendered[name]} == KINDS[name]


def validate_core(doc: dict[str, Any]) -> None:
    """Strict validation against the schemas of the oldest Kubernetes minor these manifests support
    (1.29: every field they use exists there) and of the newest that kubernetes-validate knows."""
    kubernetes_validate = need("kubernetes_validate", "kubernetes-validate")
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {e.message} "
                        f"at {list(e.path)}")


@pytest.mark.parametrize("name", DIRECTORIES)
def test_core_resources_match_the_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    core = [d for d in rendered[name] if d["kind"] in CORE_KINDS]
    assert core or name == "overlays/kserve"
    for doc in core:
        validate_core(doc)


def test_the_schema_check_rejects_a_wrong_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """kubernetes-validate is strict: a misspelt probe field fails (so the test above can fail)."""
    kubernetes_validate = need("kubernetes_validate", "kubernetes-validate")
    doc = only(rendered["base"], "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    container(broken)["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


# ---------------------------------------------------------------------------------------------
# The Deployment and the server's flags

def test_the_deployment_probes_the_kserve_health_paths(rendered: dict[str, list[dict[str, Any]]]) -> None:
    c = container(only(rendered["base"], "Deployment"))
    args = serve_args(c["args"])
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_names["http"] == args.port
    assert args.host == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in port_names, probe
    # The listener opens once the models are loaded: the startup probe is their loading budget.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_the_grace_period_covers_the_drain_grace_and_the_servers_shutdown(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """SIGKILL comes terminationGracePeriodSeconds after the pod starts terminating; before it,
    pyserve's drain grace (still serving while the endpoints forget the pod), then its two shutdown
    phases (connections, then the queue), each up to --shutdown-timeout-s (README: graceful shutdown)."""
    spec = only(rendered["base"], "Deployment")["spec"]["template"]["spec"]
    c = container({"spec": {"template": {"spec": spec}}})
    args = serve_args(c["args"])
    assert "lifecycle" not in c, "the drain grace replaces a preStop sleep (the image has no sleep to rely on)"
    assert args.drain_grace_s >= 5, "kube-proxy and the endpoints need a few seconds to stop routing to the pod"
    needed = args.drain_grace_s + 2 * args.shutdown_timeout_s
    assert spec["terminationGracePeriodSeconds"] >= needed + 5, (spec["terminationGracePeriodSeconds"], needed)
    assert spec["terminationGracePeriodSeconds"] <= needed + 30, "SIGKILL long after the server has given up"


def test_the_pod_runs_as_the_images_user_with_a_read_only_root(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from test_docker import DOCKERFILES, one, stages

    spec = only(rendered["base"], "Deployment")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    uid, gid = (int(x) for x in one(stages(DOCKERFILES["cpu"])["runtime"], "USER").split(":"))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (uid, gid)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(c["resources"]["requests"]) == {"cpu", "memory"} and "memory" in c["resources"]["limits"]
    # The repository the server serves is a read-only mounted volume; PYSERVE_HOME is writable.
    args = serve_args(c["args"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[str(args.repository)].get("readOnly") is True
    assert "/var/lib/pyserve" in mounts and "/tmp" in mounts


def test_the_image_tag_is_the_package_version(rendered: dict[str, list[dict[str, Any]]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container(only(rendered["base"], "Deployment"))["image"] == f"pyserve:{version}"
    runtime = only(rendered["overlays/kserve"], "ServingRuntime")
    assert runtime["spec"]["containers"][0]["image"] == f"pyserve:{version}"


def pod_labels(docs: list[dict[str, Any]]) -> dict[str, str]:
    return only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_service_and_the_budget_select_the_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["base"]
    labels = pod_labels(docs)
    deployment = only(docs, "Deployment")
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    service = only(docs, "Service")
    assert selects(service["spec"]["selector"], labels)
    assert selects(only(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    container_ports = {p["name"] for p in container(deployment)["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) >= {"http", "metrics"}
    for port in ports.values():
        assert port["targetPort"] in container_ports, port


def test_the_secret_components_mount_what_the_flags_read(secured: list[dict[str, Any]]) -> None:
    deployment = only(secured, "Deployment")
    validate_core(deployment)
    spec = deployment["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = serve_args(c["args"])
    assert args.disable_model_control is False, "with a token, model control is on (behind it)"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    files = {flag: getattr(args, flag) for flag in FILE_FLAGS if getattr(args, flag) is not None}
    assert set(files) == {"auth_token_file", "tls_cert", "tls_key"}
    for flag, path in files.items():
        mount = mounts.get(str(path.parent))
        assert mount is not None, f"--{flag.replace('_', '-')} {path}: no volume mounted at {path.parent}"
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert path.name in SECRETS[secret], (flag, path, secret)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS", probe


# ---------------------------------------------------------------------------------------------
# Metrics: what the autoscalers and Prometheus read

@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, serve_module: Any) -> dict[str, set[str]]:
    """{metric sample name: label names} of a live server's /metrics after a few requests."""
    root = tmp_path_factory.mktemp("kubernetes")
    repo = Repo(root / "models")
    repo.onnx("affine", config="max_batch_size = 8\n")
    server = serve_module([repo.root])
    for _ in range(3):
        assert infer(server.url, "affine", "json", {"x": np.ones((1, 4), np.float32)}).status_code == 200
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(requests.get(server.url + "/metrics", timeout=10).text):
        names.setdefault(family.name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value}) of each vector selector of a PromQL expression."""
    found: list[tuple[str, dict[str, str]]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: m.value for m in node.matchers.matchers if m.name != "__name__"}
            found.append((node.name, matchers))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def check_query(expr: str, exported: dict[str, set[str]]) -> set[str]:
    """The metric names of ``expr``, each checked: exported by pyserve, matched only on its own labels
    or the scrape's target labels."""
    names = set()
    for name, matchers in selectors(expr):
        assert name in exported, f"{name} (in {expr!r}) is not a metric pyserve exports"
        assert set(matchers) <= exported[name] | TARGET_LABELS, (name, sorted(matchers), expr)
        names.add(name)
    assert names, f"no metric in {expr!r}"
    return names


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((KUSTOMIZE / "overlays" / "hpa" / "prometheus-adapter-values.yaml").read_text())
    return values["rules"]["custom"]


def adapter_query(template: str, series: str) -> str:
    """A prometheus-adapter metricsQuery with its Go template filled as the adapter fills it for a
    pod metric (https://github.com/kubernetes-sigs/prometheus-adapter/blob/master/docs/config.md)."""
    return (template.replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="pyserve",pod=~"pyserve-.*"').replace("<<.GroupBy>>", "pod"))


def test_the_hpa_scales_on_a_metric_pyserve_exports(rendered: dict[str, list[dict[str, Any]]],
                                                     exported: dict[str, set[str]]) -> None:
    docs = rendered["overlays/hpa"]
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", only(docs, "Deployment")["metadata"]["name"])
    rules = {r["name"]["as"]: r for r in adapter_rules()}
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods", "pyserve's metrics are per pod"
        name = metric["pods"]["metric"]["name"]
        rule = rules.get(name)
        assert rule is not None, f"the HPA reads {name}, which no prometheus-adapter rule serves"
        series = check_query(rule["seriesQuery"], exported)
        assert re.fullmatch(rule["name"]["matches"], next(iter(series)))
        assert check_query(adapter_query(rule["metricsQuery"], next(iter(series))), exported) == series
        assert set(rule["resources"]["overrides"]) <= TARGET_LABELS
        assert float(metric["pods"]["target"]["averageValue"]) > 0


def test_the_query_check_rejects_a_metric_pyserve_does_not_export(exported: dict[str, set[str]]) -> None:
    with pytest.raises(AssertionError, match="not a metric pyserve exports"):
        check_query('sum(pyserve_queue_size{namespace="pyserve"})', exported)
    with pytest.raises(AssertionError):
        check_query('sum(pyserve_inflight_requests{route="x"})', exported)


def test_keda_scales_the_deployment_on_the_same_metric_down_to_zero(
        rendered: dict[str, list[dict[str, Any]]], exported: dict[str, set[str]]) -> None:
    """A ScaledObject of keda.sh/v1alpha1, the fields this overlay uses (KEDA's ScaledObject spec and
    Prometheus scaler reference): scaleTargetRef.name, replica bounds, triggers of type prometheus with
    serverAddress, query, threshold and activationThreshold."""
    docs = rendered["overlays/keda"]
    scaled = only(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    known = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod",
             "idleReplicaCount", "initialCooldownPeriod", "fallback", "advanced", "triggers"}
    assert set(spec) <= known, set(spec) - known
    assert spec["scaleTargetRef"]["name"] == only(docs, "Deployment")["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"], "scale-to-zero"
    for key in ("pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[key], int) and spec[key] > 0, key
    hpa = only(rendered["overlays/hpa"], "HorizontalPodAutoscaler")
    hpa_names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert spec["triggers"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert set(meta) <= {"serverAddress", "query", "threshold", "activationThreshold", "namespace",
                             "ignoreNullValues", "unsafeSsl", "customHeaders", "queryParameters"}, set(meta)
        assert re.match(r"https?://", meta["serverAddress"])
        # KEDA reads its metadata as strings.
        assert all(isinstance(v, str) for v in meta.values()), meta
        assert float(meta["threshold"]) > 0 and float(meta["activationThreshold"]) >= 0
        assert check_query(meta["query"], exported) == hpa_names, "the same metric as overlays/hpa"
        # At zero pods no series exists: the query reads 0 rather than an empty result.
        assert meta["query"].endswith(" or vector(0)"), meta["query"]


def test_the_servicemonitor_scrapes_the_services_metrics_port(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """A ServiceMonitor of monitoring.coreos.com/v1: its selector picks the Service, each endpoint
    names a port of it and the path pyserve serves its metrics on."""
    for name in ("overlays/hpa", "overlays/keda"):
        docs = rendered[name]
        monitor = only(docs, "ServiceMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
        service = only(docs, "Service")
        assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "tlsConfig",
                                     "bearerTokenSecret", "authorization"}
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
            assert re.fullmatch(r"\d+s", endpoint["interval"]) and re.fullmatch(r"\d+s", endpoint["scrapeTimeout"])


# ---------------------------------------------------------------------------------------------
# KServe

def kserve_check(items: list[tuple[str, dict[str, Any], str]]) -> list[str | None]:
    """For each ``(model name, resource, where)``: None when the resource fits the KServe SDK's model,
    else why not (tests/kserve_models.py, run in a subprocess to keep kserve's protobuf messages out
    of this process)."""
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("kserve_models.py"))],
                            input=json.dumps(items), capture_output=True, text=True, timeout=120)
    if result.returncode == 3:
        if _in_ci():
            pytest.fail("kserve is missing; CI installs it with the test extra")
        pytest.skip("pip install -e '.[test]' (kserve)")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_the_kserve_resources_fit_the_kserve_models(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["overlays/kserve"]
    runtime = only(docs, "ServingRuntime")
    service = only(docs, "InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    misspelt = {**runtime, "spec": {**runtime["spec"], "protocols": ["v2"]}}
    no_containers = {**runtime, "spec": {k: v for k, v in runtime["spec"].items() if k != "containers"}}
    found = kserve_check([("V1alpha1ServingRuntime", runtime, "ServingRuntime"),
                          ("V1beta1InferenceService", service, "InferenceService"),
                          ("V1alpha1ServingRuntime", misspelt, "misspelt"),
                          ("V1alpha1ServingRuntime", no_containers, "no_containers")])
    assert found[:2] == [None, None], found[:2]
    # The check can fail: an unknown field, a missing required one.
    assert found[2] is not None and "['protocols'] are not fields of V1alpha1ServingRuntimeSpec" in found[2]
    assert found[3] is not None and "containers" in found[3], found[3]


def test_the_serving_runtime_serves_kserves_model_folder_on_kserves_port(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["overlays/kserve"]
    runtime, service = only(docs, "ServingRuntime"), only(docs, "InferenceService")
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"], "KServe v2 over HTTP (grpc-v2 once pyserve has gRPC)"
    c = spec["containers"][0]
    assert c["name"] == "kserve-container"  # the name KServe expects of the runtime's main container
    args = serve_args(c["args"])
    assert str(args.repository) == "/mnt/models", "where KServe's storage initializer puts storageUri"
    assert [p["containerPort"] for p in c["ports"]] == [args.port] == [8080]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert runtime["metadata"]["annotations"]["prometheus.kserve.io/port"] == str(args.port)
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert model["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert service["spec"]["predictor"]["minReplicas"] == 0
