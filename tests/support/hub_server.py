"""A local stand-in for the ModelScope hub API, for the download tests.

Serves the file listing and the files of one model over plain HTTP on 127.0.0.1 (a free port),
honours `Range: bytes=N-`, and can be told to drop the connection part-way through a file or to
serve corrupt bytes. Every request is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.support.servers import serving


@dataclass
class HubState:
    model_id: str
    files: dict[str, bytes]
    listing_sha256: dict[str, str | None] = field(default_factory=dict)
    drop_at: int | None = None  # close the connection once this many bytes are sent...
    drop_file: str = "pytorch_model.pt"  # ...of this file
    drops_left: int = 0  # how many responses are cut short
    corrupt: bool = False  # flip one byte in the middle of every file served
    ignore_range: bool = False
    revisions: tuple[str, ...] = ("master",)
    unserved: tuple[str, ...] = ()  # listed, but GET answers 404
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path+query, Range)

    def sha256(self, name: str) -> str | None:
        if name in self.listing_sha256:
            return self.listing_sha256[name]
        return hashlib.sha256(self.files[name]).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: _HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        base = f"/api/v1/models/{state.model_id}/repo"
        if query.get("Revision") not in state.revisions:
            self._send(404, b'{"Code": 10010205001, "Message": "no revision"}', "application/json")
        elif url.path == base + "/files":
            self._listing(state)
        elif url.path == base and query.get("FilePath") in state.unserved:
            self._send(404, b"", "text/plain")
        elif url.path == base and query.get("FilePath") in state.files:
            self._file(state, query["FilePath"])
        else:
            self._send(404, b'{"Code": 10010205001, "Message": "not found"}', "application/json")

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _listing(self, state: HubState) -> None:
        files = [
            {
                "Name": name,
                "Path": name,
                "Type": "blob",
                "Size": len(data),
                "Sha256": state.sha256(name),
                "Revision": "0123abcd",
            }
            for name, data in state.files.items()
        ]
        files.append({"Name": "sub", "Path": "sub", "Type": "tree", "Size": 0})
        body = json.dumps({"Code": 200, "Data": {"Files": files}}).encode()
        self._send(200, body, "application/json")

    def _file(self, state: HubState, name: str) -> None:
        data = state.files[name]
        if state.corrupt:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        start, status, headers = 0, 200, {}
        spec = self.headers.get("Range")
        if spec and not state.ignore_range:
            start = int(spec.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        cut = state.drop_at is not None and name == state.drop_file and state.drops_left > 0
        if cut and start < state.drop_at:
            state.drops_left -= 1
            self.wfile.write(body[: state.drop_at - start])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class HubServer:
    """Context manager: `with HubServer(state) as url:` serves `state` at `url`."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self._server = _HubServer(state)
        self._stack = contextlib.ExitStack()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> str:
        self._stack.enter_context(serving(self._server))
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
