"""`Client`: calls `POST /api/v1/parse` and friends with retries and verified TLS."""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO

import requests

RETRY_STATUSES = frozenset({429, 502, 503, 504})
API_KEY_HEADER = "X-API-Key"

_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


class ClientError(Exception):
    """Base of the client's errors."""


class ConnectionFailed(ClientError):
    """The service could not be reached, or its certificate could not be verified."""


class ServiceError(ClientError):
    """The service answered with an error (after any retries).

    `status` is the HTTP status, `code` and `request_id` come from the API's JSON error body
    (`{"error": {"code", "message", "request_id"}}`), `retry_after` from the header (seconds);
    `headers` are the answer's.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        detail = f"{status} {code}: {message}"
        if request_id:
            detail += f" (request id {request_id})"
        if retry_after is not None:
            detail += f"; retry after {retry_after:g} s"
        super().__init__(detail)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = headers if headers is not None else {}


def sniff_image_type(data: bytes) -> str:
    """The Content-Type of a JPEG, PNG or WebP from its first bytes; ClientError otherwise
    (the service accepts nothing else, so fail before uploading)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ClientError("not a JPEG, PNG or WebP image (the service accepts only those)")


class Client:
    """A client for one service URL.

    Args:
        url: the service's base URL, e.g. ``https://localhost:8443``.
        ca_bundle: PEM file of the CA(s) to trust (the dev CA: ``var/tls/ca.pem``); default:
            the system's trust store. Verification cannot be turned off.
        api_key: sent as ``X-API-Key``; default: the ``M2FP_API_KEY`` environment variable.
        timeout: seconds for connecting and for each read.
        retries: extra attempts after a 429, 502, 503, 504 or a failed connection.
        backoff: first wait in seconds when the server gives no Retry-After (doubles, jittered).
        max_retry_after: the longest wait honoured; a longer Retry-After fails at once.
    """

    def __init__(
        self,
        url: str = "https://localhost:8443",
        *,
        ca_bundle: str | Path | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_retry_after: float = 30.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ClientError(f"the URL must start with https:// (got {url!r})")
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise ClientError(f"CA bundle {ca_bundle} does not exist")
        if retries < 0 or backoff < 0 or max_retry_after < 0:
            raise ClientError("retries, backoff and max_retry_after must not be negative")
        self.url = url.rstrip("/")
        self.verify: str | bool = str(ca_bundle) if ca_bundle is not None else True
        self.api_key = api_key if api_key is not None else os.environ.get("M2FP_API_KEY")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.session = session or requests.Session()
        self._sleep = sleep

    # -- API calls --------------------------------------------------------------------------

    def parse(
        self,
        image: bytes | str | Path | BinaryIO,
        *,
        output: str = "overlay",
        alpha: float | None = None,
        instances: bool | None = None,
        mask_format: str | None = None,
        include_overlay: bool | None = None,
        classes: Iterable[int | str] | None = None,
        format: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Parse one image (bytes, a path, or a binary file object).

        `output="overlay"` or `"cutout"` returns the image bytes (PNG, or WebP with
        `format="webp"`); `output="json"` returns the JSON result as a dict; any other output
        the service offers returns its bytes. `params` passes further query options as they are
        (the service refuses unknown ones with a 400 that names them).
        """
        query: dict[str, str] = {"output": output}
        for name, value in (
            ("alpha", alpha),
            ("instances", instances),
            ("mask_format", mask_format),
            ("include_overlay", include_overlay),
            ("format", format),
        ):
            if value is not None:
                query[name] = str(value).lower() if isinstance(value, bool) else str(value)
        if classes is not None:
            query["classes"] = ",".join(str(c) for c in classes)
        query.update(params or {})
        response = self.parse_response(_read_image(image), query)
        return response.json() if output == "json" else response.content

    def parse_response(
        self, data: bytes, params: Mapping[str, str], *, retries: int | None = None
    ) -> requests.Response:
        """`POST /api/v1/parse` with the image bytes and these query parameters as they are:
        the successful response, or ServiceError. `retries` overrides the client's (the batch
        runner passes 0 and paces its retries itself)."""
        output = params.get("output", "")
        if not _TOKEN.fullmatch(output):
            raise ClientError(f"output must be a name such as overlay, json or cutout: {output!r}")
        accept = "application/json" if output == "json" else "image/*, application/octet-stream"
        return self._request(
            "POST",
            "/api/v1/parse",
            retries=retries,
            params=dict(params),
            data=data,
            headers={"Content-Type": sniff_image_type(data), "Accept": accept},
        )

    def classes(self) -> list[dict]:
        """The class legend: ``[{"id", "name", "color"}, ...]``."""
        body = self._request("GET", "/api/v1/classes").json()
        return body["classes"] if isinstance(body, dict) and "classes" in body else body

    def ready(self) -> bool:
        """Whether the service answers /readyz with 200 (no retries)."""
        try:
            return self._send("GET", "/readyz").status_code == 200
        except ConnectionFailed:
            return False

    # -- transport --------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, retries: int | None = None, **kwargs: Any
    ) -> requests.Response:
        """Send, retrying on RETRY_STATUSES and failed connections; raise ServiceError on an
        error answer that is not (or no longer) worth retrying."""
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                response = self._send(method, path, **kwargs)
            except ConnectionFailed as exc:
                if exc.__cause__ is not None and isinstance(
                    exc.__cause__, requests.exceptions.SSLError
                ):
                    raise  # a certificate problem does not go away by retrying
                if attempt >= retries:
                    raise
                self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            if 300 <= response.status_code < 400:
                location = response.headers.get("Location", "?")
                raise ClientError(f"{self.url} redirects to {location}: use that URL")
            if response.status_code < 400:
                return response
            error = _service_error(response)
            if response.status_code not in RETRY_STATUSES or attempt >= retries:
                raise error
            if error.retry_after is not None and error.retry_after > self.max_retry_after:
                raise error  # the server asks for a longer pause than we are willing to wait
            wait = error.retry_after if error.retry_after is not None else self._backoff(attempt)
            self._sleep(wait)
            attempt += 1

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.api_key:
            headers[API_KEY_HEADER] = self.api_key
        try:
            return self.session.request(
                method,
                self.url + path,
                headers=headers,
                timeout=self.timeout,
                verify=self.verify,
                allow_redirects=False,
                **kwargs,
            )
        except requests.exceptions.SSLError as exc:
            hint = (
                f"is {self.verify} the CA that signed the server's certificate?"
                if isinstance(self.verify, str)
                else "pass the CA bundle that signed it (the dev CA: --ca-bundle var/tls/ca.pem)"
            )
            raise ConnectionFailed(
                f"TLS certificate verification failed for {self.url}: {hint}"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise ConnectionFailed(f"could not connect to {self.url}: is it running?") from exc
        except requests.exceptions.Timeout as exc:
            raise ConnectionFailed(f"{self.url} did not answer within {self.timeout} s") from exc
        except requests.exceptions.RequestException as exc:  # e.g. a connection cut mid-answer
            raise ConnectionFailed(f"{self.url}: {type(exc).__name__}: {exc}") from exc

    def _backoff(self, attempt: int) -> float:
        return self.backoff * (2**attempt) * random.uniform(0.5, 1.0)


def _read_image(image: bytes | str | Path | BinaryIO) -> bytes:
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, str | Path):
        try:
            return Path(image).read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read {image}: {exc.strerror}") from None
    return image.read()


def _service_error(response: requests.Response) -> ServiceError:
    code, message, request_id = "http_error", response.reason or "error", None
    try:
        body = response.json()
        error = body["error"]
        code = str(error.get("code", code))
        message = str(error.get("message", message))
        request_id = error.get("request_id")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    request_id = request_id or response.headers.get("X-Request-ID")
    return ServiceError(
        response.status_code,
        code,
        message,
        request_id=request_id,
        retry_after=_retry_after(response.headers.get("Retry-After")),
        headers=response.headers,
    )


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
