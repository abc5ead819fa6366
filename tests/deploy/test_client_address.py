"""The app's trusted proxy networks in every shipped layout name the edge and nothing wider
than they must: scripts/run (nginx on loopback or the Unix socket), docker-compose.yml (the
edge's fixed address) and the Kubernetes base (the pod network, one entry deep). Read, not run:
the settings are parsed by `Settings.from_env` exactly as the app will."""

from __future__ import annotations

import ipaddress
import re

import yaml

from security.client_address import TrustedProxies
from settings import Settings
from tests.support.paths import REPO


def proxies_of(env: dict[str, str]):  # noqa: ANN201
    names = ("M2FP_TRUSTED_PROXIES", "M2FP_TRUSTED_PROXY_NETWORKS")
    return TrustedProxies.from_settings(Settings.from_env({name: env[name] for name in names}))


def test_scripts_run_trusts_nginx_on_this_machine_only():
    text = (REPO / "scripts" / "run").read_text()
    hops = re.search(r'M2FP_TRUSTED_PROXIES="\$\{M2FP_TRUSTED_PROXIES:-(\d+)\}"', text)
    networks = re.search(
        r'M2FP_TRUSTED_PROXY_NETWORKS="\$\{M2FP_TRUSTED_PROXY_NETWORKS:-([^}"]+)\}"', text
    )
    assert hops and networks, "scripts/run no longer sets the proxy settings"
    proxies = proxies_of(
        {"M2FP_TRUSTED_PROXIES": hops[1], "M2FP_TRUSTED_PROXY_NETWORKS": networks[1]}
    )
    assert proxies.hops == 1
    assert proxies.client("127.0.0.1", "198.51.100.7") == "198.51.100.7"  # nginx's upstream
    assert proxies.client("", "198.51.100.7") == "198.51.100.7"  # or its Unix socket
    assert proxies.client("127.0.0.2", "198.51.100.7") == "127.0.0.2"  # a local stranger
    assert proxies.client("192.0.2.1", "198.51.100.7") == "192.0.2.1"


def test_compose_trusts_the_edges_fixed_address_only():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    edge, app = compose["services"]["edge"], compose["services"]["app"]
    # the edge's address on the network the app is on (the default one unless it names its own)
    app_networks = app.get("networks", ["default"])
    names = list(app_networks) if isinstance(app_networks, dict) else app_networks
    edge_address = None
    for name in names:
        settings = (edge.get("networks") or {}).get(name) or {}
        edge_address = edge_address or settings.get("ipv4_address")
        subnets = compose["networks"][name]["ipam"]["config"]
        if settings.get("ipv4_address"):
            address = ipaddress.ip_address(settings["ipv4_address"])
            assert any(address in ipaddress.ip_network(s["subnet"]) for s in subnets)
    assert edge_address is not None, "the edge has no fixed address the app could trust"
    proxies = proxies_of(app["environment"])
    assert proxies.hops == 1
    assert proxies.client(edge_address, "198.51.100.7") == "198.51.100.7"
    neighbour = str(ipaddress.ip_address(edge_address) + 1)  # redis, or any other container
    assert proxies.client(neighbour, "198.51.100.7") == neighbour
    assert proxies.client("127.0.0.1", "198.51.100.7") == "127.0.0.1"


def test_kubernetes_trusts_the_pod_network_one_entry_deep():
    docs = [
        d
        for d in yaml.safe_load_all((REPO / "deploy/kubernetes/base/app.yaml").read_text())
        if d and d["kind"] == "Deployment"
    ]
    (app,) = (
        c for d in docs for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "app"
    )
    env = {e["name"]: e["value"] for e in app["env"]}
    proxies = proxies_of(env)
    assert proxies.hops == 1  # a pod inside the network cannot push the walk further
    assert env["M2FP_TRUSTED_PROXY_NETWORKS"] == env["M2FP_METRICS_ALLOW"]  # the pod network
    assert proxies.client("10.1.2.3", "6.6.6.6, 198.51.100.7") == "198.51.100.7"
    assert proxies.client("10.1.2.3", "6.6.6.6, 10.9.9.9") == "10.9.9.9"


def test_the_edge_and_the_app_share_one_latency_target():
    """nginx's read timeout and the app's deadlines follow M2FP_LATENCY_TARGET_SECONDS: an
    edge rendered with another value than the app's could answer 504 before the app's 503."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    targets = {
        name: compose["services"][name]["environment"]["M2FP_LATENCY_TARGET_SECONDS"]
        for name in ("edge", "app")
    }
    assert len(set(targets.values())) == 1, targets
    values = set()
    for manifest in ("app.yaml", "edge.yaml"):
        text = (REPO / "deploy" / "kubernetes" / "base" / manifest).read_text()
        found = re.findall(r"name: M2FP_LATENCY_TARGET_SECONDS\n\s+value: \"?([0-9.]+)", text)
        assert len(found) == 1, manifest
        values.add(found[0])
    assert len(values) == 1, values
