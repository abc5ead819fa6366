"""Render nginx/nginx.conf.template into one complete nginx.conf.

    python -m nginx.render --out var/nginx/nginx.conf --runtime-dir /dev/shm/m2fp \\
        --cert var/tls/server.pem --key var/tls/server.key [--upstream 127.0.0.1:8000 ...]

Everything that differs between a laptop, a test and a container is an option here (listen
addresses, certificate paths, the app upstreams, the body cap, the static root, the runtime
directory that holds the pid file and the temporary paths, the log destinations, the edge
limits); the rest of the configuration is fixed in the template. The body cap defaults to the
app's own (`M2FP_MAX_UPLOAD_MB` through `settings.Settings`, plus the room the JSON/base64 form
needs), so nginx and the app refuse the same requests; the read timeout to the one derived from
the app's latency target (`M2FP_LATENCY_TARGET_SECONDS`), so the app's 503 comes before 504.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from http_contract import (
    API_CSP,
    ErrorKind,
    generic_error,
    json_body_allowance,
    permissions_policy,
    upload_bytes_for_body,
    upload_limit_message,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).resolve().with_name("nginx.conf.template")
DEFAULT_STATIC_ROOT = REPO / "static"

MIB = 1024 * 1024
# Chunked transfer framing counts against the body buffer: a buffer equal to the cap still
# spills a chunked body of exactly the cap (tests/deploy/test_nginx.py sends one). 1 MiB covers the
# framing of a body at the default cap sent in chunks of 128 bytes or more (measured: 64-byte
# chunks overflow it); such a body is refused, not written (write_config: fail closed).
BODY_BUFFER_HEADROOM = 1 * MIB
# The errors nginx answers itself, each with the app's name for its status (the generic kind in
# http_contract.ERRORS) and any other statuses it also catches (494: nginx's own "request
# header too large"). 405 is TRACE, 501 a transfer coding other than chunked, 505 a request
# line naming HTTP/2.0 or above: nginx refuses those while it parses the request.
EDGE_ERRORS: tuple[tuple[int, tuple[int, ...]], ...] = (
    (400, (497,)),  # 497: plain HTTP sent to the HTTPS port
    (403, ()),
    (404, ()),
    (405, ()),
    (413, ()),
    (414, ()),
    (429, ()),
    (431, (494,)),
    (500, ()),
    (501, ()),
    (502, ()),
    (503, ()),
    (504, ()),
    (505, ()),
)
# Where the error pages live: internal locations reached by URI. A named location (@name) cannot
# serve a request whose URI failed to parse (`/%ZZ`, `/x%00`, a 20 KB address): nginx answers
# those with its stock HTML 500 ("empty URI in redirect to named location").
ERROR_PREFIX = "/__errors/"

_RATE = re.compile(r"^\d+r/[sm]$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


class RenderError(ValueError):
    """An option is malformed; the message names it."""


def max_body_bytes_for(max_upload_bytes: int) -> int:
    """The request body cap for an image byte cap: the app's largest body, the base64 form of
    an image at the cap in its JSON envelope (`http_contract.json_body_allowance`)."""
    return json_body_allowance(max_upload_bytes)


def default_max_body_bytes() -> int:
    """The app's body cap from the environment (`M2FP_MAX_UPLOAD_MB`, default 10)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from settings import Settings

    return max_body_bytes_for(Settings.from_env().max_upload_bytes)


def default_read_timeout_s() -> int:
    """nginx's wait for the app, from the app's latency target (`M2FP_LATENCY_TARGET_SECONDS`,
    default 60): later than the engine's deadline, so the app answers 503 before nginx 504
    (`http_contract.time_limits`)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from settings import Settings

    return Settings.from_env().time_limits.proxy_read_timeout_s


@dataclass(frozen=True)
class NginxOptions:
    runtime_dir: Path
    cert: Path
    key: Path
    https_listen: tuple[str, ...] = ("127.0.0.1:8443",)
    http_listen: tuple[str, ...] = ("127.0.0.1:8080",)
    public_https_port: int | None = None  # the port in redirects; default: the first https one
    # The name in the HTTP-to-HTTPS redirect: the service's own, never the Host a client sent.
    server_name: str = "localhost"
    upstreams: tuple[str, ...] = ("127.0.0.1:8000",)
    max_body_bytes: int = field(default_factory=default_max_body_bytes)
    body_buffer_bytes: int | None = None  # default: max_body_bytes + BODY_BUFFER_HEADROOM
    static_root: Path | None = DEFAULT_STATIC_ROOT  # None: /static goes to the app
    access_log: str = "off"  # a path, "/dev/stdout", or "off"
    error_log: str = "stderr"
    user: str | None = None  # "user [group]": only when the master runs as root
    worker_processes: str = "auto"
    worker_connections: int = 1024
    edge_rate: str = "20r/s"
    edge_burst: int = 40
    parse_rate: str = "2r/s"
    parse_burst: int = 10
    # Requests in progress per client (an IPv4 address or an IPv6 /64), and uploads among them.
    # No cap on all clients together: a handful of slow clients would fill it for everyone.
    conns_per_client: int = 16
    uploads_per_client: int = 4
    body_timeout_s: int = 10  # between two reads of a request body
    read_timeout_s: int = field(default_factory=default_read_timeout_s)
    hsts_max_age: int = 63_072_000
    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    real_ip_from: tuple[str, ...] = ()  # load balancers in front of nginx
    ocsp_stapling: bool = False
    trusted_cert: Path | None = None
    resolver: str | None = None

    def validate(self) -> None:
        for name in ("runtime_dir", "cert", "key"):
            if not Path(getattr(self, name)).is_absolute():
                raise RenderError(f"--{name.replace('_', '-')} must be an absolute path")
        if self.static_root is not None and not Path(self.static_root).is_absolute():
            raise RenderError("--static-root must be an absolute path")
        if not self.https_listen:
            raise RenderError("at least one --https-listen address is needed")
        if not _HOSTNAME.match(self.server_name):
            raise RenderError(f"--server-name {self.server_name!r} is not a host name")
        if not self.upstreams:
            raise RenderError("at least one --upstream is needed")
        for address in (*self.https_listen, *self.http_listen, *self.upstreams):
            _split_host_port(address)
        for name in ("edge_rate", "parse_rate"):
            if not _RATE.match(getattr(self, name)):
                raise RenderError(f"--{name.replace('_', '-')} must look like 10r/s or 30r/m")
        if self.max_body_bytes < 1:
            raise RenderError("--max-body-bytes must be positive")
        if self.body_buffer_bytes is not None and self.body_buffer_bytes < 1:
            raise RenderError("--body-buffer-bytes must be positive")
        for name in (
            "edge_burst",
            "parse_burst",
            "conns_per_client",
            "uploads_per_client",
            "body_timeout_s",
            "worker_connections",
            "read_timeout_s",
        ):
            if getattr(self, name) < 1:
                raise RenderError(f"--{name.replace('_', '-')} must be at least 1")
        for network in (*self.metrics_allow, *self.real_ip_from):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise RenderError(str(exc)) from None
        if self.ocsp_stapling and (self.trusted_cert is None or self.resolver is None):
            raise RenderError("--ocsp-stapling needs --trusted-cert and --resolver")
        for value in (self.access_log, self.error_log, self.user or "", self.worker_processes):
            if any(c in value for c in ";{}'\"\n"):
                raise RenderError(f"unsafe characters in {value!r}")


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise RenderError(f"{address!r} is not HOST:PORT (IPv6 as [::1]:PORT)")
    if any(c in host for c in ";{} \t\n'\""):
        raise RenderError(f"{address!r} is not HOST:PORT")
    return host, int(port)


def security_headers(*, hsts: str, cache_control: str) -> dict[str, str]:
    """The headers nginx adds to what it serves itself (error pages, static files): the app's
    set plus HSTS, which must be repeated because add_header in a location replaces the
    server-level list instead of extending it."""
    return {
        "Strict-Transport-Security": hsts,
        # the app's for a response that runs nothing (security/headers.py)
        "Content-Security-Policy": API_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": permissions_policy(camera=False),
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "X-Permitted-Cross-Domain-Policies": "none",
        "Cache-Control": cache_control,
    }


def _add_headers(headers: dict[str, str]) -> list[str]:
    lines = [f'add_header {name} "{value}" always;' for name, value in headers.items()]
    return [*lines, "add_header X-Request-ID $request_id always;"]


def render(options: NginxOptions, template: str | None = None) -> str:
    """The nginx.conf text for `options` (validated first)."""
    options.validate()
    template = TEMPLATE.read_text() if template is None else template
    hsts = f"max-age={options.hsts_max_age}; includeSubDomains"
    https_port = options.public_https_port or _split_host_port(options.https_listen[0])[1]
    values = {
        "user_line": f"user {options.user};" if options.user else "",
        "worker_processes": options.worker_processes,
        "worker_connections": str(options.worker_connections),
        "runtime_dir": str(options.runtime_dir),
        "temp_dir": str(Path(options.runtime_dir) / "temp"),
        "error_log": options.error_log,
        "access_log_line": (
            "access_log off;"
            if options.access_log == "off"
            else f"access_log {options.access_log} m2fp;"
        ),
        "max_body_bytes": str(options.max_body_bytes),
        "body_buffer_bytes": str(
            options.body_buffer_bytes or options.max_body_bytes + BODY_BUFFER_HEADROOM
        ),
        "edge_rate": options.edge_rate,
        "edge_burst": str(options.edge_burst),
        "parse_rate": options.parse_rate,
        "parse_burst": str(options.parse_burst),
        "conns_per_client": str(options.conns_per_client),
        "uploads_per_client": str(options.uploads_per_client),
        "body_timeout": f"{options.body_timeout_s}s",
        "read_timeout": f"{options.read_timeout_s}s",
        "real_ip_lines": _lines(
            [f"set_real_ip_from {net};" for net in options.real_ip_from]
            + (
                ["real_ip_header X-Forwarded-For;", "real_ip_recursive on;"]
                if options.real_ip_from
                else ["# Clients connect directly (no --real-ip-from load balancer in front)."]
            ),
            indent=4,
        ),
        "upstream_servers": _lines(
            [f"server {u} max_fails=1 fail_timeout=10s;" for u in options.upstreams], indent=8
        ),
        "http_server": _http_server(
            options.http_listen,
            options.server_name,
            https_port,
            errors=[*_error_pages(), *_error_locations(hsts, options.max_body_bytes)],
        ),
        "hsts": hsts,
        "https_listen_lines": _lines([f"listen {a} ssl http2;" for a in options.https_listen], 8),
        "cert": str(options.cert),
        "key": str(options.key),
        "ocsp_lines": _lines(
            [
                "ssl_stapling on;",
                "ssl_stapling_verify on;",
                f"ssl_trusted_certificate {options.trusted_cert};",
                f"resolver {options.resolver};",
            ]
            if options.ocsp_stapling
            else ["# OCSP stapling: off (--ocsp-stapling; many CAs no longer run responders)."],
            indent=8,
        ),
        "metrics_allow_lines": _lines([f"allow {n};" for n in options.metrics_allow], indent=12),
        "static_location": _static_location(options.static_root, hsts),
        "error_pages": _lines(_error_pages(), indent=8),
        "error_locations": _lines(_error_locations(hsts, options.max_body_bytes), indent=8),
    }
    return _PLACEHOLDER.sub(lambda m: _lookup(values, m.group(1)), template)


def _error_pages() -> list[str]:
    return [
        f"error_page {' '.join(map(str, (status, *also)))} = "
        f"{ERROR_PREFIX}{_edge_error(status).code};"
        for status, also in EDGE_ERRORS
    ]


def _error_locations(hsts: str, max_body_bytes: int) -> list[str]:
    return [_error_location(status, hsts, max_body_bytes) for status, _ in EDGE_ERRORS]


def _edge_error(status: int) -> ErrorKind:
    kind = generic_error(status)
    if kind is None:
        raise RenderError(f"no error in http_contract.ERRORS is called {status}")
    return kind


def error_body(kind: ErrorKind, message: str | None = None) -> str:
    """The JSON body nginx sends for `kind`, in the API's error shape; `$request_id` is nginx's
    variable, filled in per request."""
    error = {"code": kind.code, "message": message or kind.message, "request_id": "$request_id"}
    body = json.dumps({"error": error}, separators=(",", ":"))
    # inside nginx's single quotes: no quote, no escape, no variable but the request id
    if "'" in body or "\\" in body or body.count("$") != 1:
        raise RenderError(f"the {kind.code} message cannot go into nginx.conf: {body}")
    return body


def _error_location(status: int, hsts: str, max_body_bytes: int) -> str:
    kind = _edge_error(status)
    # the cap, in the words of the app's own 413 for a body over it (web/inputs.py)
    limit = upload_limit_message(upload_bytes_for_body(max_body_bytes))
    message = limit if status == 413 else None
    body = [
        "internal;",
        "types { }  # the type must not follow the extension of the URI that failed",
        "default_type application/json;",
        *_add_headers(security_headers(hsts=hsts, cache_control="no-store")),
        *([f"add_header Retry-After {kind.retry_after} always;"] if kind.retry_after else []),
        f"return {status} '{error_body(kind, message)}';",
    ]
    return (
        f"location = {ERROR_PREFIX}{kind.code} {{\n            "
        + _lines(body, indent=12)
        + "\n        }"
    )


def _http_server(
    listen: Sequence[str], server_name: str, https_port: int, errors: Sequence[str]
) -> str:
    """The plain-HTTP server: every request redirected to HTTPS, and the same JSON error pages
    as the HTTPS server for the requests nginx refuses before that (`/%ZZ`, TRACE...)."""
    if not listen:
        return "# No plain-HTTP listener (--no-http)."
    suffix = "" if https_port == 443 else f":{https_port}"
    body = [
        *(f"listen {a};" for a in listen),
        "server_name _;",
        *REFUSE_HTTP_0_9,
        "location / {",
        f"    return 308 https://{server_name}{suffix}$request_uri;",
        "}",
        *errors,
    ]
    return "server {\n        " + _lines(body, indent=8) + "\n    }"


# A response to HTTP/0.9 has no status line and no headers (no HSTS, no CSP): close instead.
REFUSE_HTTP_0_9 = ("if ($m2fp_http_0_9) {", "    return 444;", "}")


def _static_location(static_root: Path | None, hsts: str) -> str:
    if static_root is None:
        return "# /static: served by the app (no --static-root)."
    headers = _add_headers(security_headers(hsts=hsts, cache_control="no-cache"))
    body = [f"alias {static_root}/;", *headers]
    return "location /static/ {\n            " + _lines(body, indent=12) + "\n        }"


def _lookup(values: dict[str, str], name: str) -> str:
    if name not in values:
        raise RenderError(f"the template uses an unknown placeholder {{{{{name}}}}}")
    return values[name]


def _lines(lines: Sequence[str], indent: int) -> str:
    """Join directives for a placeholder whose first line is already indented."""
    return ("\n" + " " * indent).join(lines)


TEMP_SUBDIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def write_config(options: NginxOptions, out: Path) -> Path:
    """Render and write `out` (its parent is created), and prepare the runtime directory so
    that nginx's workers cannot write into the temporary paths at all: a body or response that
    would be buffered to a file fails (500, `[crit] ... Permission denied` in the error log)
    instead of reaching the disk.

    - master as root: nginx makes each temp path its worker user's own and writable at start,
      so the `temp` directory above them is root-only (0700) and the workers cannot go through;
    - master as another user (a container): nginx leaves existing paths as they are, so they
      are made read-only (0500) for that user.
    """
    text = render(options)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    runtime = Path(options.runtime_dir)
    temp = runtime / "temp"
    for sub in TEMP_SUBDIRS:
        (temp / sub).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(runtime, 0o700)
        os.chmod(temp, 0o700)
    else:
        for sub in TEMP_SUBDIRS:
            os.chmod(temp / sub, 0o500)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nginx.render", description="Render the service's nginx.conf."
    )
    p.add_argument("--out", type=Path, required=True, help="where to write nginx.conf")
    p.add_argument("--runtime-dir", type=Path, required=True, help="pid file and temp paths")
    p.add_argument("--cert", type=Path, required=True, help="certificate chain (PEM)")
    p.add_argument("--key", type=Path, required=True, help="private key (PEM)")
    p.add_argument("--https-listen", action="append", metavar="ADDR:PORT")
    p.add_argument("--http-listen", action="append", metavar="ADDR:PORT")
    p.add_argument("--no-http", action="store_true", help="no HTTP→HTTPS redirect listener")
    p.add_argument("--public-https-port", type=int, help="port in redirects (behind NAT)")
    p.add_argument("--server-name", default="localhost", help="host name in redirects")
    p.add_argument("--upstream", action="append", metavar="HOST:PORT", help="app instance")
    p.add_argument("--max-body-bytes", type=int, help="default: from M2FP_MAX_UPLOAD_MB")
    p.add_argument("--static-root", help="directory served at /static/, or 'none'")
    p.add_argument("--access-log", default="off", help="path, /dev/stdout, or off")
    p.add_argument("--error-log", default="stderr", help="path or stderr")
    p.add_argument("--user", help="worker user [group] when the master runs as root")
    p.add_argument("--worker-processes", default="auto")
    p.add_argument("--edge-rate", default="20r/s", help="requests per client address")
    p.add_argument("--edge-burst", type=int, default=40)
    p.add_argument("--parse-rate", default="2r/s", help="parse requests per client address")
    p.add_argument("--parse-burst", type=int, default=10)
    p.add_argument("--conns-per-client", type=int, default=16)
    p.add_argument("--uploads-per-client", type=int, default=4)
    p.add_argument("--body-timeout", type=int, default=10, help="seconds between body reads")
    p.add_argument(
        "--read-timeout", type=int, help="seconds to wait for the app; default: from the target"
    )
    p.add_argument("--hsts-max-age", type=int, default=63_072_000)
    p.add_argument("--metrics-allow", action="append", metavar="CIDR")
    p.add_argument("--real-ip-from", action="append", default=[], metavar="CIDR")
    p.add_argument("--ocsp-stapling", action="store_true")
    p.add_argument("--trusted-cert", type=Path)
    p.add_argument("--resolver")
    return p


def options_from_args(args: argparse.Namespace) -> NginxOptions:
    static: Path | None = DEFAULT_STATIC_ROOT
    if args.static_root == "none":
        static = None
    elif args.static_root:
        static = Path(args.static_root).resolve()
    extra: dict[str, int] = {}
    if args.max_body_bytes is not None:
        extra["max_body_bytes"] = args.max_body_bytes
    if args.read_timeout is not None:
        extra["read_timeout_s"] = args.read_timeout
    return NginxOptions(
        runtime_dir=args.runtime_dir.resolve(),
        cert=args.cert.resolve(),
        key=args.key.resolve(),
        https_listen=tuple(args.https_listen or ("127.0.0.1:8443",)),
        http_listen=() if args.no_http else tuple(args.http_listen or ("127.0.0.1:8080",)),
        public_https_port=args.public_https_port,
        server_name=args.server_name,
        upstreams=tuple(args.upstream or ("127.0.0.1:8000",)),
        static_root=static,
        access_log=args.access_log,
        error_log=args.error_log,
        user=args.user,
        worker_processes=args.worker_processes,
        edge_rate=args.edge_rate,
        edge_burst=args.edge_burst,
        parse_rate=args.parse_rate,
        parse_burst=args.parse_burst,
        conns_per_client=args.conns_per_client,
        uploads_per_client=args.uploads_per_client,
        body_timeout_s=args.body_timeout,
        hsts_max_age=args.hsts_max_age,
        metrics_allow=tuple(args.metrics_allow or ("127.0.0.1", "::1")),
        real_ip_from=tuple(args.real_ip_from),
        ocsp_stapling=args.ocsp_stapling,
        trusted_cert=args.trusted_cert,
        resolver=args.resolver,
        **extra,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        out = write_config(options_from_args(args), args.out)
    except RenderError as exc:
        print(f"nginx.render: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
