"""nginx as rendered from nginx/: TLS profile, redirect, headers, body cap, memory-only bodies
and responses, edge limits, forwarded headers, error pages, upstreams.

Real nginx (Debian's /usr/sbin/nginx) on 127.0.0.1 with certificates from scripts/dev-cert, in
front of a small real HTTP server that reports what nginx forwarded (tests/support/edge.py).
The same configuration in front of the real gunicorn + app: tests/deploy/test_e2e.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import pytest
import requests

from http_contract import upload_bytes_for_body, upload_limit_message
from nginx.render import (
    NginxOptions,
    RenderError,
    max_body_bytes_for,
    render,
    write_config,
)
from tests.support.edge import (
    SPILL,
    assert_json_error,
    assert_security_headers,
    echo_upstream,
    https,
    post,
    request,
    slow_request,
    start_nginx,
    tls_context,
)
from tests.support.fswatch import disk_watch
from tests.support.paths import REPO
from tests.support.servers import free_port, wait_for_port

pytestmark = pytest.mark.deploy

CAP = max_body_bytes_for(10 * 1024 * 1024)  # the default app cap: 10 MiB images, base64 form


@pytest.fixture(scope="module")
def edge(tmp_path_factory, tls, upstream):
    """nginx with the default options (the app's default cap) in front of the echo upstream."""
    server = start_nginx(
        tmp_path_factory.mktemp("nginx"), tls, [f"127.0.0.1:{upstream.server_port}"]
    )
    yield server
    server.stop()


# -- the rendered file --------------------------------------------------------------------------


def test_rendered_config_is_complete_and_accepted_by_nginx(tmp_path, tls):
    options = NginxOptions(runtime_dir=tmp_path / "run", cert=tls.cert, key=tls.key)
    text = render(options)
    assert not re.search(r"^\s*include\b", text, re.M)  # nothing from /etc/nginx
    assert not re.search(r"\{\{\s*[a-z_]+\s*\}\}", text)  # every placeholder filled
    for directive in (
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_session_tickets off;",
        "server_tokens off;",
        "proxy_http_version 1.1;",
        "proxy_max_temp_file_size 0;",
        "client_body_in_file_only off;",
        f"client_max_body_size {CAP};",
        f"client_body_buffer_size {CAP + 1024 * 1024};",
        "least_conn;",
    ):
        assert directive in text
    conf = write_config(options, tmp_path / "nginx.conf")
    assert conf.read_text() == text
    done = subprocess.run(
        ["/usr/sbin/nginx", "-t", "-e", "stderr", "-p", str(tmp_path / "run"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "[warn]" not in done.stderr and "[emerg]" not in done.stderr


def test_body_cap_follows_the_apps_upload_setting(tmp_path, tls, monkeypatch):
    monkeypatch.setenv("M2FP_MAX_UPLOAD_MB", "2")
    options = NginxOptions(runtime_dir=tmp_path, cert=tls.cert, key=tls.key)
    assert options.max_body_bytes == max_body_bytes_for(2 * 1024 * 1024)
    assert max_body_bytes_for(3) == 4 + 64 * 1024
    assert f"client_max_body_size {options.max_body_bytes};" in render(options)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"edge_rate": "fast"}, "--edge-rate"),
        ({"upstreams": ("localhost",)}, "HOST:PORT"),
        ({"upstreams": ()}, "--upstream"),
        ({"cert": Path("server.pem")}, "--cert"),
        ({"metrics_allow": ("10.0.0.0/33",)}, "10.0.0.0/33"),
        ({"access_log": "/tmp/x; evil"}, "unsafe"),
        ({"ocsp_stapling": True}, "--trusted-cert"),
        ({"server_name": "evil.example/$host"}, "--server-name"),
        ({"server_name": "a b"}, "--server-name"),
    ],
)
def test_render_refuses_bad_options(tmp_path, change, message):
    base = {"runtime_dir": tmp_path, "cert": tmp_path / "c.pem", "key": tmp_path / "k.pem"}
    options = NginxOptions(**{**base, **change})
    with pytest.raises(RenderError, match=re.escape(message)):
        render(options)


def test_render_cli_writes_config_and_private_runtime_dir(tmp_path, tls):
    out, runtime = tmp_path / "conf" / "nginx.conf", tmp_path / "rt"
    done = subprocess.run(
        [sys.executable, "-m", "nginx.render", "--out", str(out), "--runtime-dir", str(runtime)]
        + ["--cert", str(tls.cert), "--key", str(tls.key), "--upstream", "127.0.0.1:8001"]
        + ["--upstream", "127.0.0.1:8002", "--no-http", "--static-root", "none"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "server 127.0.0.1:8001" in text and "server 127.0.0.1:8002" in text
    assert "return 308" not in text and "location /static/" not in text
    assert (runtime / "temp" / "client_body").is_dir()
    assert (runtime / "temp").stat().st_mode & 0o077 == 0
    bad = subprocess.run(
        [sys.executable, "-m", "nginx.render", "--out", str(out), "--runtime-dir", str(runtime)]
        + ["--cert", str(tls.cert), "--key", str(tls.key), "--edge-rate", "lots"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "--edge-rate must look like" in bad.stderr


# -- TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        (ssl.TLSVersion.TLSv1, False),
        (ssl.TLSVersion.TLSv1_1, False),
        (ssl.TLSVersion.TLSv1_2, True),
        (ssl.TLSVersion.TLSv1_3, True),
    ],
)
def test_only_tls_1_2_and_1_3_are_accepted(edge, tls, version, accepted):
    ctx = tls_context(tls.ca, version=version)
    with socket.create_connection(("127.0.0.1", edge.https_port), timeout=10) as raw:
        if not accepted:
            with pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname="localhost")
            return
        with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            assert (
                conn.version()
                == {
                    ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                    ssl.TLSVersion.TLSv1_3: "TLSv1.3",
                }[version]
            )
            if version == ssl.TLSVersion.TLSv1_2:
                assert conn.cipher()[0].startswith("ECDHE-")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_the_old_protocol_client_works_against_a_server_that_allows_it(tls, version):
    """Control for the refusals above: the pinned client context does speak TLS 1.0/1.1."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls.cert, tls.key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = version
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result: dict[str, str] = {}

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                result["version"] = tls_conn.version()

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            ctx = tls_context(tls.ca, version=version)
            with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                assert conn.version() in ("TLSv1", "TLSv1.1")
        thread.join(10)
    assert result["version"] in ("TLSv1", "TLSv1.1")


def test_openssl_s_client_agrees_on_protocols(edge, tls):
    def handshake(flag: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["openssl", "s_client", flag, "-connect", f"127.0.0.1:{edge.https_port}"]
            + ["-servername", "localhost", "-CAfile", str(tls.ca), "-verify_return_error"],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert handshake("-tls1_1").returncode != 0
    ok = handshake("-tls1_2")
    assert ok.returncode == 0 and "Verify return code: 0 (ok)" in ok.stdout
    assert "Server public key is 256 bit" in ok.stdout


def test_sslyze_mozilla_intermediate_compliant(edge, tls):
    done = subprocess.run(
        [sys.executable, "-m", "sslyze", f"127.0.0.1:{edge.https_port}"]
        + ["--certinfo_ca_file", str(tls.ca), "--mozilla_config=intermediate"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"127.0.0.1:{edge.https_port}: OK - Compliant." in done.stdout


def test_http_redirects_to_https_with_308(edge):
    conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=10)
    conn.request("POST", "/api/v1/parse?output=json", headers={"Host": "localhost"})
    response = conn.getresponse()
    assert response.status == 308  # keeps the method and body, unlike 301/302
    assert response.getheader("Location") == (
        f"https://localhost:{edge.https_port}/api/v1/parse?output=json"
    )
    conn.close()


def test_http2_is_offered(edge, tls):
    done = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(tls.ca), "-o", "/dev/null"]
        + ["-w", "%{http_version}", edge.url("/healthz")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout == "2", done.stderr


# -- headers and forwarding ---------------------------------------------------------------------


def test_app_sees_nginx_client_address_not_a_client_supplied_one(edge, tls):
    status, headers, body = post(
        edge,
        tls,
        "/api/v1/parse?token=abc",
        b"{}",
        {"X-Forwarded-For": "1.2.3.4", "X-Request-ID": "forged", "X-Forwarded-Proto": "http"},
    )
    assert status == 200
    seen = json.loads(body)["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert re.fullmatch(r"[0-9a-f]{32}", seen["x-request-id"])
    assert seen["host"] == "localhost"
    assert_security_headers(headers)
    # the access log has the same request id and the path without its query string
    entry = edge.access_entry(seen["x-request-id"])
    assert entry is not None
    assert entry["path"] == "/api/v1/parse" and entry["client"] == "127.0.0.1"
    assert "token" not in edge.access_log.read_text()


def test_upstream_errors_pass_through_with_their_retry_after(edge, tls):
    conn = https(edge, tls.ca)
    conn.request("GET", "/status/503")
    response = conn.getresponse()
    assert response.status == 503
    assert response.read() == b'{"upstream": true}'  # the app's own answer, not nginx's page
    assert response.getheader("Retry-After") == "7"
    assert response.getheader("Strict-Transport-Security")
    conn.close()


def test_unreachable_app_gets_json_502(tmp_path, tls):
    server = start_nginx(tmp_path, tls, [f"127.0.0.1:{free_port()}"])
    try:
        status, headers, body = post(server, tls, "/api/v1/parse", b"x")
        assert_json_error(status, headers, body, expected_status=502, code="bad_gateway")
        assert headers["Retry-After"] == "5"
    finally:
        server.stop()


def test_metrics_closed_to_addresses_outside_the_allow_list(tmp_path, tls, upstream):
    server = start_nginx(
        tmp_path, tls, [f"127.0.0.1:{upstream.server_port}"], metrics_allow=("10.0.0.0/8",)
    )
    try:
        conn = https(server, tls.ca)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert_json_error(
            response.status,
            dict(response.getheaders()),
            response.read(),
            expected_status=403,
            code="forbidden",
        )
    finally:
        server.stop()


def test_several_upstreams_share_the_load(tmp_path, tls):
    with echo_upstream() as first, echo_upstream() as second:
        server = start_nginx(
            tmp_path, tls, [f"127.0.0.1:{first.server_port}", f"127.0.0.1:{second.server_port}"]
        )
        try:
            for _ in range(10):
                status, _, _ = post(server, tls, "/api/v1/classes", b"")
                assert status == 200
        finally:
            server.stop()
        assert len(first.requests) >= 3 and len(second.requests) >= 3
        assert len(first.requests) + len(second.requests) == 10


def test_static_files_are_served_by_nginx_with_headers(tmp_path, tls):
    # nginx's workers run as nobody: the root must be readable by them (tmp_path is not).
    root = Path(tempfile.mkdtemp(prefix="m2fp-static-"))
    try:
        os.chmod(root, 0o755)
        (root / "app.js").write_text("console.log('hi');\n")
        os.chmod(root / "app.js", 0o644)
        server = start_nginx(tmp_path, tls, [f"127.0.0.1:{free_port()}"], static_root=root)
        try:
            response = requests.get(server.url("/static/app.js"), verify=tls.ca, timeout=10)
            assert response.status_code == 200 and response.text == "console.log('hi');\n"
            assert response.headers["Content-Type"].startswith("application/javascript")
            assert response.headers["Cache-Control"] == "no-cache"
            assert_security_headers(response.headers)
            missing = requests.get(server.url("/static/nope.js"), verify=tls.ca, timeout=10)
            assert_json_error(
                missing.status_code,
                missing.headers,
                missing.content,
                expected_status=404,
                code="not_found",
            )
        finally:
            server.stop()
    finally:
        shutil.rmtree(root)


# -- limits ------------------------------------------------------------------------------------


def test_edge_rate_limit_answers_json_429_with_retry_after(tmp_path, tls, upstream):
    server = start_nginx(
        tmp_path,
        tls,
        [f"127.0.0.1:{upstream.server_port}"],
        edge_rate="1r/m",
        edge_burst=2,
        parse_rate="1r/m",
        parse_burst=1,
    )
    try:
        session = requests.Session()
        codes = [
            session.get(server.url("/api/v1/classes"), verify=tls.ca, timeout=10).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 200]  # the rate's one plus a burst of two
        limited = session.get(server.url("/api/v1/classes"), verify=tls.ca, timeout=10)
        assert_json_error(
            limited.status_code,
            limited.headers,
            limited.content,
            expected_status=429,
            code="rate_limited",
        )
        assert limited.headers["Retry-After"] == "1"
        # counted in the access log, not written one by one to the error log
        assert "limiting requests" not in server.errors()
        entry = server.access_entry(limited.headers["X-Request-ID"])
        assert entry is not None and entry["status"] == 429
        assert entry["path"] == "/api/v1/classes"
    finally:
        server.stop()


def test_one_byte_over_the_cap_gets_json_413(edge, tls):
    status, headers, body = post(
        edge, tls, "/api/v1/parse", os.urandom(CAP + 1), {"Content-Type": "image/png"}
    )
    payload = assert_json_error(
        status, headers, body, expected_status=413, code="payload_too_large"
    )
    # the image cap behind nginx's body cap, in the app's words and the docs' units
    assert payload["error"]["message"] == upload_limit_message(upload_bytes_for_body(CAP))


def test_chunked_body_one_byte_over_the_cap_gets_json_413(edge, tls):
    data = os.urandom(CAP + 1)
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
    status, headers, body = post(edge, tls, "/api/v1/parse", chunks, chunked=True)
    assert_json_error(status, headers, body, expected_status=413, code="payload_too_large")


# -- nothing on disk ----------------------------------------------------------------------------


def test_bodies_at_the_cap_and_large_responses_never_touch_the_disk(tmp_path, edge, tls, upstream):
    """The acceptance check of the privacy promise at nginx: fatrace (every filesystem, with
    the process id) while nginx takes uploads exactly at the cap, with Content-Length and
    chunked, and sends a response far larger than its buffers to a slow reader."""
    data = os.urandom(CAP)
    big = 24 * 1024 * 1024
    before = len(edge.errors())
    with disk_watch(tmp_path, edge.temp_paths()) as watch:
        status, _, body = post(edge, tls, "/api/v1/parse", data, {"Content-Type": "image/png"})
        assert status == 200 and json.loads(body)["body_bytes"] == CAP
        chunks = (data[i : i + 16384] for i in range(0, CAP, 16384))
        status, _, body = post(edge, tls, "/api/v1/parse", chunks, chunked=True)
        assert status == 200 and json.loads(body)["body_bytes"] == CAP
        status, _, received = slow_request(edge, tls, "GET", f"/big?bytes={big}")
        assert status == 200 and received == big
    log = edge.errors()[before:]
    assert not SPILL.search(log), log
    written = watch.writes(edge.pids(), allowed=[edge.access_log, edge.error_log])
    assert written == []
    assert watch.dir_events == []
    for path in edge.temp_paths():
        assert list(path.iterdir()) == []
    # the watch itself works: it saw nginx append to its access log
    assert any(
        pid in edge.pids() and "W" in flags and path == str(edge.access_log)
        for _, pid, flags, path in watch.events
    )


def test_a_body_that_would_spill_is_refused_rather_than_written(tmp_path, tls, upstream):
    """Fail closed: tiny chunks fill the buffer with framing, and a body that does not fit
    would go to a temp file; the workers cannot write there, so nginx answers 500 instead."""
    server = start_nginx(
        tmp_path / "ng",
        tls,
        [f"127.0.0.1:{upstream.server_port}"],
        body_buffer_bytes=64 * 1024,
    )
    try:
        with disk_watch(tmp_path, server.temp_paths()) as watch:
            status, headers, body = post(server, tls, "/api/v1/parse", os.urandom(256 * 1024))
        assert_json_error(status, headers, body, expected_status=500, code="internal_error")
        assert "Permission denied" in server.errors()
        assert "buffered to a temporary file" not in server.errors()
        assert watch.writes(server.pids(), allowed=[server.access_log, server.error_log]) == []
        assert watch.dir_events == []
        assert list((server.temp_dir / "client_body").iterdir()) == []
    finally:
        server.stop()


def test_the_disk_watch_sees_a_write_and_who_made_it(tmp_path):
    """Control for the no-write checks above: a process that writes a file (and one that
    writes an unlinked O_TMPFILE, as Python's tempfile does) is caught, with its pid."""
    watched = tmp_path / "watched"
    watched.mkdir()
    script = (
        "import sys, tempfile\n"
        "open(sys.argv[1] + '/f', 'w').write('x')\n"
        "anonymous = tempfile.TemporaryFile(dir=sys.argv[1])\n"
        "anonymous.write(b'y')\n"
        "anonymous.flush()\n"
    )
    with disk_watch(tmp_path, [watched]) as watch:
        writer = subprocess.Popen([sys.executable, "-c", script, str(watched)])
        assert writer.wait(30) == 0
    written = watch.writes({writer.pid})
    assert any(line.endswith(f"{watched}/f") for line in written), written
    assert len(written) >= 2  # the named file and the anonymous one
    assert any("CREATE" in e.kinds for e in watch.dir_events)
    assert any("MODIFY" in e.kinds for e in watch.dir_events)


# -- no core dumps: a crashing nginx must not write its buffers (request bodies) to disk ----------


def _core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])  # soft, hard
    raise AssertionError(f"no core limit for {pid}")


def _nginx_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in children]


def test_nginx_workers_and_the_entrypoint_master_dump_no_core(tmp_path, tls, upstream):
    """Started with core dumps allowed (prlimit), nginx's workers still get RLIMIT_CORE 0
    (worker_rlimit_core in the template), and the edge image's entrypoint sets the master's
    too (ulimit -c 0) before nginx starts."""
    allow_cores = ["prlimit", "--core=unlimited:unlimited"]
    server = start_nginx(
        tmp_path / "direct", tls, [f"127.0.0.1:{upstream.server_port}"], wrapper=allow_cores
    )
    try:
        assert _core_limit(server.proc.pid) == "unlimited unlimited"  # the control
        workers = _nginx_children(server.proc.pid)
        assert workers
        assert {_core_limit(pid) for pid in workers} == {"0 0"}
    finally:
        server.stop()

    https_port, http_port = free_port(), free_port()
    run_dir = tmp_path / "entry"
    env = {
        "PATH": os.environ["PATH"],
        "M2FP_UPSTREAMS": f"127.0.0.1:{upstream.server_port}",
        "M2FP_LISTEN": "127.0.0.1",
        "M2FP_HTTPS_PORT": str(https_port),
        "M2FP_HTTP_PORT": str(http_port),
        "M2FP_TLS_CERT": str(tls.cert),
        "M2FP_TLS_KEY": str(tls.key),
        "M2FP_EDGE_RUN_DIR": str(run_dir),
        "M2FP_STATIC_ROOT": str(tmp_path),
    }
    proc = subprocess.Popen(
        [*allow_cores, str(REPO / "nginx" / "docker-entrypoint.sh")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(https_port, proc=proc)
        assert _core_limit(proc.pid) == "0 0"  # the entrypoint exec'd nginx: same pid
        assert {_core_limit(pid) for pid in _nginx_children(proc.pid)} == {"0 0"}
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(10)


# -- nginx's own counts, for Prometheus, without logging requests --------------------------------


def _stub_status(socket_path: Path) -> dict[str, int]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(socket_path))
        sock.sendall(b"GET /stub_status HTTP/1.0\r\nHost: localhost\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    # Active connections: 1 / server accepts handled requests / 5 5 7 / Reading: 0 Writing: 1 ...
    lines = body.splitlines()
    accepts, handled, requests_ = (int(n) for n in lines[2].split())
    return {
        "active": int(lines[0].split(":")[1]),
        "accepts": accepts,
        "handled": handled,
        "requests": requests_,
    }


def test_stub_status_on_a_private_socket_only(edge, tls):
    """stub_status answers on a unix socket in nginx's private runtime directory (what an
    exporter reads), never on the public ports, and counts requests nginx answered itself."""
    socket_path = Path(edge.options.runtime_dir) / "status.sock"
    before = _stub_status(socket_path)
    _, _, body = request(edge, tls, "GET", "/stub_status")
    assert b"Active connections" not in body  # the public port passes it to the app
    for _ in range(3):  # nginx's own answers (a redirect) count too
        plain = requests.get(
            f"http://127.0.0.1:{edge.http_port}/", timeout=5, allow_redirects=False
        )
        assert plain.status_code == 308
    after = _stub_status(socket_path)
    assert after["requests"] - before["requests"] >= 5  # the status read itself counts as well
    assert after["accepts"] >= before["accepts"] + 4
