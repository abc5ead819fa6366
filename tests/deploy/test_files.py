"""scripts/dev-cert, the Dockerfile (hadolint and its promises), docker-compose.yml, and the
edge image's entry point run as a non-root user (Docker itself cannot run on these machines)."""

from __future__ import annotations

import datetime as dt
import fnmatch
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from settings import Settings
from tests.support.compose import compose
from tests.support.edge import echo_upstream, make_dev_cert, tls_context
from tests.support.paths import REPO
from tests.support.servers import free_port, gunicorn_setting, wait_for_port

pytestmark = pytest.mark.deploy
DEV_CERT = REPO / "scripts" / "dev-cert"


# -- scripts/dev-cert ---------------------------------------------------------------------------


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_dev_cert_makes_an_ecdsa_ca_and_server_certificate(tmp_path):
    tls = make_dev_cert(tmp_path)
    ca, leaf = load(tls.ca), load(tls.cert)
    for cert in (ca, leaf):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.issuer == ca.subject
    ca.public_key().verify(
        leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm)
    )
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=366)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert oct(tls.key.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_dev_cert_never_replaces_an_existing_ca_silently(tmp_path):
    tls = make_dev_cert(tmp_path)
    ca_bytes, leaf_bytes = tls.ca.read_bytes(), tls.cert.read_bytes()
    make_dev_cert(tmp_path)  # nothing to do
    assert tls.ca.read_bytes() == ca_bytes and tls.cert.read_bytes() == leaf_bytes
    make_dev_cert(tmp_path, "--name", "kiosk.lan", "--ip", "192.168.1.50")  # new names
    assert tls.ca.read_bytes() == ca_bytes and tls.cert.read_bytes() != leaf_bytes
    san = load(tls.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kiosk.lan" in san.get_values_for_type(x509.DNSName)
    leaf_bytes = tls.cert.read_bytes()
    make_dev_cert(tmp_path, "--renew")
    assert tls.ca.read_bytes() == ca_bytes and tls.cert.read_bytes() != leaf_bytes
    assert load(tls.cert).issuer == load(tls.ca).subject


def test_dev_cert_without_the_ca_key_refuses_to_issue_and_says_what_to_do(tmp_path):
    tls = make_dev_cert(tmp_path)
    (tmp_path / "ca.key").unlink()
    make_dev_cert(tmp_path)  # the certificate is still good: nothing needed
    done = subprocess.run(
        [str(DEV_CERT), "--dir", str(tmp_path), "--renew"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "ca.key is missing" in done.stderr and "--new-ca" in done.stderr
    old_ca = tls.ca.read_bytes()
    make_dev_cert(tmp_path, "--new-ca")
    assert tls.ca.read_bytes() != old_ca
    assert [p.name for p in tmp_path.glob("ca.pem.old-*")]
    assert load(tls.cert).issuer == load(tls.ca).subject


# -- Dockerfile and compose ---------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(2)
            stages[current] = [line]
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_dockerfile_images_run_as_non_root_with_health_checks():
    stages = dockerfile_stages()
    assert {"python-base", "build", "app", "edge"} <= set(stages)
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+", text, re.M)  # GPU by default
    assert "BASE_IMAGE=debian:bookworm-slim" in text  # the CPU variant, documented
    for name in ("app", "edge"):
        users = [line for line in stages[name] if line.startswith("USER ")]
        assert users and not users[-1].split()[1].startswith(("0", "root"))
        assert any(line.startswith("HEALTHCHECK") for line in stages[name])
    app = " ".join(stages["app"])
    assert "/readyz" in app and "PYTHONDONTWRITEBYTECODE=1" in app
    assert "COPY --from=build /opt/venv" in app  # multi-stage: no build tools in the image
    assert "'app:create_app()'" in app.replace('"app:create_app()"', "'app:create_app()'")
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var", "models", "tests"} <= set(ignored)


def edge_files(root: Path) -> Path:
    """What the edge-files stage copies to /opt/m2fp (its COPY lines, less .dockerignore),
    laid out under `root`; returns the copy of /opt/m2fp."""
    ignored = [p for p in (REPO / ".dockerignore").read_text().split() if not p.startswith("#")]

    def skip(relative: str) -> bool:
        parts = relative.split("/")
        return any(
            fnmatch.fnmatch(relative, p)
            or fnmatch.fnmatch(parts[-1], p.removeprefix("**/"))
            or any(fnmatch.fnmatch(part, p.removeprefix("**/")) for part in parts[:-1])
            for p in ignored
        )

    for line in dockerfile_stages()["edge-files"]:
        words = line.split()
        if words[0] != "COPY" or not words[-1].startswith("/opt/m2fp"):
            continue
        *sources, dest = words[1:]
        for source in sources:
            assert not skip(source), f"{source} is in .dockerignore"
            target = root / dest.lstrip("/")
            if dest.endswith("/"):
                target = target / Path(source).name
            if (REPO / source).is_dir():
                for path in sorted((REPO / source).rglob("*")):
                    relative = path.relative_to(REPO).as_posix()
                    if path.is_file() and not skip(relative):
                        out = target / path.relative_to(REPO / source)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, out)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
    return root / "opt" / "m2fp"


def test_edge_image_files_render_the_config_with_the_standard_library_only(tmp_path):
    """nginx/render.py runs in the edge image (Debian's python3, no packages) from what the
    Dockerfile copies there: the renderer, settings.py and http_contract.py. Python without
    site-packages (-S) renders the config from those files alone, with the app's body cap and
    the error list."""
    from http_contract import ERROR_CODES, json_body_allowance

    opt = edge_files(tmp_path / "image")
    assert {p.name for p in opt.iterdir()} >= {"nginx", "settings.py", "http_contract.py"}
    assert not list(opt.rglob("__pycache__")) and not (opt / "web").exists()
    out = tmp_path / "run" / "nginx.conf"
    done = subprocess.run(
        [sys.executable, "-S", "-E", "-s", "-m", "nginx.render", "--out", str(out)]
        + ["--runtime-dir", str(tmp_path / "run"), "--cert", "/c.pem", "--key", "/k.pem"]
        + ["--static-root", "none"],
        capture_output=True,
        text=True,
        cwd=opt,
        env={"PATH": os.environ["PATH"], "M2FP_MAX_UPLOAD_MB": "2"},
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert f"client_max_body_size {json_body_allowance(2 * 1024 * 1024)};" in text
    assert ERROR_CODES["bad_gateway"].message in text


def test_compose_runs_nginx_app_and_redis_read_only():
    files = compose()
    services = files["base"]["services"]
    assert set(services) == {"edge", "app", "redis"}
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
    assert services["edge"]["build"]["target"] == "edge"
    assert services["app"]["build"]["target"] == "app"
    # tmpfs only where needed: nginx's rendered config and pid; the app writes nothing
    assert [t.split(":")[0] for t in services["edge"]["tmpfs"]] == ["/run/nginx"]
    assert "tmpfs" not in services["app"] and "tmpfs" not in services["redis"]
    env = services["app"]["environment"]
    assert env["M2FP_TRUSTED_PROXIES"] == "1"
    assert env["M2FP_RATELIMIT_STORAGE"].startswith("redis://redis:")
    assert services["edge"]["environment"]["M2FP_UPSTREAMS"] == "app:8000"
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.endswith(":ro"), volume
    assert "--save" in services["redis"]["command"]
    gpu = services["app"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    cpu = files["cpu"]["services"]["app"]
    assert cpu["build"]["args"]["BASE_IMAGE"] == "debian:bookworm-slim"
    assert "deploy" in cpu and cpu["deploy"] is None  # !reset: no GPU reservation


def test_compose_limits_memory_and_keeps_it_out_of_swap():
    """Swap is disk: every service has a memory limit and a memory+swap limit equal to it."""
    for name, service in compose()["base"]["services"].items():
        assert service["mem_limit"], name
        assert service["memswap_limit"] == service["mem_limit"], name


# -- the edge image's entry point, as its non-root user would run it -----------------------------


def test_edge_entrypoint_runs_nginx_as_non_root_and_fails_closed(tmp_path):
    """The container's nginx runs as an unprivileged user: nginx then leaves the temp paths as
    they are, so write_config makes them read-only; a body that would spill is refused."""
    work = Path(tempfile.mkdtemp(prefix="m2fp-edge-"))
    try:
        os.chmod(work, 0o755)
        tls = make_dev_cert(work / "tls")
        run_dir = work / "run"
        run_dir.mkdir()
        for path in (work / "tls", run_dir, *sorted((work / "tls").iterdir())):
            shutil.chown(path, "nobody", "nogroup")
        https_port, http_port = free_port(), free_port()
        with echo_upstream() as upstream:
            env = {
                "PATH": os.environ["PATH"],
                "M2FP_UPSTREAMS": f"127.0.0.1:{upstream.server_port}",
                "M2FP_LISTEN": "127.0.0.1",
                "M2FP_HTTPS_PORT": str(https_port),
                "M2FP_HTTP_PORT": str(http_port),
                "M2FP_PUBLIC_HTTPS_PORT": str(https_port),
                "M2FP_TLS_CERT": str(tls.cert),
                "M2FP_TLS_KEY": str(tls.key),
                "M2FP_EDGE_RUN_DIR": str(run_dir),
                "M2FP_STATIC_ROOT": str(work),
            }
            # nginx reopens /dev/stdout: it must be something its user may open (in a
            # container the runtime sees to that; here, files owned by nobody)
            out_path, err_path = work / "stdout", work / "stderr"
            for path in (out_path, err_path):
                path.touch()
                shutil.chown(path, "nobody", "nogroup")
            proc = subprocess.Popen(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
                + [str(REPO / "nginx" / "docker-entrypoint.sh")],
                env=env,
                stdout=out_path.open("ab"),
                stderr=err_path.open("ab"),
            )
            try:
                wait_for_port(https_port, proc=proc)
                ok = requests.get(
                    f"https://localhost:{https_port}/readyz", verify=tls.ca, timeout=10
                )
                assert ok.status_code == 200 and ok.headers["Strict-Transport-Security"]
                # 7-byte chunks: the framing overflows the buffer, which would spill to disk
                body = b"7\r\nxxxxxxx\r\n" * (10 * 1024 * 1024 // 7) + b"0\r\n\r\n"
                conn = http.client.HTTPSConnection(
                    "localhost", https_port, context=tls_context(tls.ca), timeout=60
                )
                conn.request(
                    "POST", "/api/v1/parse", body=body, headers={"Transfer-Encoding": "chunked"}
                )
                response = conn.getresponse()
                assert response.status == 500
                assert json.loads(response.read())["error"]["code"] == "internal_error"
                conn.close()
                assert list((run_dir / "temp" / "client_body").iterdir()) == []
            finally:
                proc.send_signal(signal.SIGQUIT)
                proc.wait(15)
        out, err = out_path.read_bytes(), err_path.read_bytes()
        assert b"Permission denied" in err
        assert b"buffered to a temporary file" not in err
        assert b'"path":"/readyz"' in out  # access log on stdout
        assert oct((run_dir / "temp" / "client_body").stat().st_mode & 0o777) == "0o500"
    finally:
        shutil.rmtree(work)


def test_compose_lets_the_edge_and_the_app_stop_gracefully():
    """Docker's default stop (TERM, KILL after 10 s) would cut parses in progress: the app
    gets gunicorn's whole graceful_timeout, nginx a graceful QUIT and its read timeout."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]

    def seconds(value: str) -> int:
        assert value.endswith("s"), value
        return int(value[:-1])

    graceful = gunicorn_setting("graceful_timeout", {})
    assert seconds(services["app"]["stop_grace_period"]) >= graceful
    assert services["edge"]["stop_signal"] == "SIGQUIT"
    read_timeout = Settings.from_env({}).time_limits.proxy_read_timeout_s
    assert seconds(services["edge"]["stop_grace_period"]) >= read_timeout
