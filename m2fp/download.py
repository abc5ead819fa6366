"""Fetch the ModelScope model files: HTTPS, progress bar, resume, atomic install, SHA-256.

`python -m m2fp download` writes `configuration.json` and `pytorch_model.pt` of
`damo/cv_resnet101_image-multiple-human-parsing` into a directory. Each file is downloaded to
`<name>.part` in that directory (resumed with an HTTP Range request when a previous run was
interrupted), checked (size, SHA-256), fsynced and renamed into place, so a file under its
final name is always complete and verified.

Hashes: the hub's file listing publishes a SHA-256 per file; the official value is not pinned
in this repository, so the computed hash is printed for pinning (`M2FP_WEIGHTS_SHA256`) and
`--sha256` pins the weights file on later downloads.

Hub API (ModelScope's own `modelscope.hub`): listing
`{endpoint}/api/v1/models/{model_id}/repo/files?Revision={rev}&Recursive=true`
→ `{"Code": 200, "Data": {"Files": [{"Path", "Type", "Size", "Sha256", ...}]}}`;
file `{endpoint}/api/v1/models/{model_id}/repo?Revision={rev}&FilePath={path}`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

import requests
from tqdm import tqdm

MODEL_ID = "damo/cv_resnet101_image-multiple-human-parsing"
DEFAULT_ENDPOINT = "https://www.modelscope.cn"
DEFAULT_REVISION = "master"
DEFAULT_DEST = "models/cv_resnet101_image-multiple-human-parsing"  # the default M2FP_MODEL_DIR
MODEL_FILES = ("configuration.json", "pytorch_model.pt")
WEIGHTS_FILE = "pytorch_model.pt"
PART_SUFFIX = ".part"
CHUNK = 1 << 16  # what a broken connection can lose from the part file
TIMEOUT = (15, 60)  # connect, read (seconds between bytes)
USER_AGENT = "m2fp-download/1"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class DownloadError(Exception):
    """A download that cannot complete; the message is one line meant for the user."""


@dataclass(frozen=True)
class RemoteFile:
    """What the hub listing says about a file (None when it does not say)."""

    path: str
    size: int | None = None
    sha256: str | None = None


def check_endpoint(endpoint: str) -> str:
    """Return the endpoint without a trailing slash; refuse anything but HTTPS, except plain
    HTTP to a loopback address (a local mirror, the tests)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return endpoint.rstrip("/")
    if parts.scheme == "http" and host in _LOOPBACK:
        return endpoint.rstrip("/")
    raise DownloadError(f"refusing endpoint {endpoint!r}: use https:// (http only to loopback)")


def file_url(endpoint: str, model_id: str, revision: str, path: str) -> str:
    query = urlencode({"Revision": revision, "FilePath": path})
    return f"{endpoint}/api/v1/models/{quote(model_id)}/repo?{query}"


def listing_url(endpoint: str, model_id: str, revision: str) -> str:
    query = urlencode({"Revision": revision, "Recursive": "true"})
    return f"{endpoint}/api/v1/models/{quote(model_id)}/repo/files?{query}"


def _network_error(url: str, exc: requests.RequestException) -> DownloadError:
    host = urlsplit(url).netloc
    if isinstance(exc, requests.exceptions.SSLError):
        return DownloadError(f"TLS certificate check failed for {host}: {_root_cause(exc)}")
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout):
        return DownloadError(f"{host} timed out")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return DownloadError(f"connection to {host} broke: {_root_cause(exc)}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return DownloadError(f"cannot reach {host}: {_root_cause(exc)}")
    return DownloadError(f"request to {host} failed: {_root_cause(exc)}")


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error chain, on one line."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "reason", None)  # urllib3 MaxRetryError, URLError
        if not isinstance(inner, BaseException):
            first = exc.args[0] if exc.args else None
            inner = first if isinstance(first, BaseException) else None
        inner = inner or exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _http_error(url: str, response: requests.Response, what: str) -> DownloadError:
    hint = " (no such model, revision or file)" if response.status_code == 404 else ""
    return DownloadError(
        f"{what}: HTTP {response.status_code} {response.reason or ''}".rstrip()
        + f"{hint} from {urlsplit(url).netloc}"
    )


def fetch_listing(
    session: requests.Session, endpoint: str, model_id: str, revision: str
) -> dict[str, RemoteFile]:
    """The hub's size and SHA-256 of each file of `model_id` at `revision` (path → RemoteFile).

    Raises:
        DownloadError: network or HTTP error, or an answer that is not the hub's JSON.
    """
    url = listing_url(endpoint, model_id, revision)
    try:
        response = session.get(url, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise _network_error(url, exc) from exc
    if response.status_code != 200:
        raise _http_error(url, response, f"listing {model_id}@{revision}")
    try:
        files = response.json()["Data"]["Files"]
        listing = {}
        for item in files:
            if item.get("Type", "blob") == "tree":
                continue
            size, digest = item.get("Size"), item.get("Sha256")
            listing[item["Path"]] = RemoteFile(
                path=item["Path"],
                size=int(size) if size is not None else None,
                sha256=digest.lower() if isinstance(digest, str) and digest else None,
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"unexpected file listing from {urlsplit(url).netloc}") from exc
    return listing


def sha256_file(path: Path, *, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _disk_error(path: Path, exc: OSError) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DownloadError(
            f"disk full while writing {path} ({exc.strerror}); free some space and run again"
            " to resume"
        )
    return DownloadError(f"cannot write {path}: {exc.strerror or exc}")


def _open_range(
    session: requests.Session, url: str, name: str, offset: int
) -> tuple[requests.Response, int, int | None]:
    """GET `url` from byte `offset`. Returns (response, start, total size or None); start is 0
    when the server sends the whole file instead (it ignored or refused the Range)."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
        if response.status_code == 416 and offset:
            # The partial file is not a prefix the server can continue: start over.
            response.close()
            response = session.get(url, stream=True, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise _network_error(url, exc) from exc
    if response.status_code == 206:
        spec = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
        try:
            span, _, total = spec.removeprefix("bytes ").partition("/")
            start = int(span.split("-")[0])
            size = int(total) if total != "*" else None
        except ValueError as exc:
            response.close()
            raise DownloadError(f"{name}: bad Content-Range {spec!r} in the answer") from exc
        if start != offset:
            response.close()
            raise DownloadError(f"{name}: server resumed at byte {start}, asked for {offset}")
        return response, start, size
    if response.status_code == 200:
        length = response.headers.get("Content-Length", "")
        return response, 0, int(length) if length.isdigit() else None
    response.close()
    raise _http_error(url, response, f"downloading {name}")


def _write_stream(
    response: requests.Response, fh: BinaryIO, part: Path, digest: Any, bar: tqdm
) -> None:
    """Append the body to `fh`, feeding `digest` (a hashlib object) and the progress bar."""
    try:
        for block in response.iter_content(CHUNK):
            view = memoryview(block)
            try:
                while view:  # unbuffered: a write may take only part of the block
                    view = view[fh.write(view) :]
            except OSError as exc:
                raise _disk_error(part, exc) from exc
            digest.update(block)
            bar.update(len(block))
    except requests.RequestException as exc:
        raise _network_error(response.url, exc) from exc
    finally:
        response.close()


def download_file(
    session: requests.Session,
    url: str,
    target: Path,
    *,
    expected: RemoteFile | None = None,
    pinned_sha256: str | None = None,
    retries: int = 3,
    progress: bool = True,
) -> str:
    """Download `url` to `target` atomically, resuming `target.part` if present.

    Args:
        expected: the hub's size and SHA-256 of the file, when known.
        pinned_sha256: a SHA-256 the file must have (checked as well as the hub's).
        retries: further attempts after a dropped connection, each resuming where it stopped.
        progress: show a tqdm bar on stderr (when it is a terminal).

    Returns:
        The file's SHA-256 (hex).

    Raises:
        DownloadError: HTTP/network error after the retries, disk full, another process
            downloading the same file, size or hash mismatch (a mismatching `.part` is
            deleted; nothing is ever left under the final name).
    """
    part = target.with_name(target.name + PART_SUFFIX)
    try:
        # Unbuffered, so no buffer is left to fail on close when the disk is full.
        fh = part.open("ab", buffering=0)
    except OSError as exc:
        raise _disk_error(part, exc) from exc
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"another download is writing {part}") from None
        try:
            digest = _download_with_retries(session, url, fh, part, expected, retries, progress)
        except DownloadError:
            if part.is_file() and os.fstat(fh.fileno()).st_size == 0:
                part.unlink()  # nothing to resume from
            raise
        _verify(part, fh, expected, pinned_sha256, digest)
        try:
            os.fsync(fh.fileno())
            os.replace(part, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise _disk_error(target, exc) from exc
    return digest


def _download_with_retries(
    session: requests.Session,
    url: str,
    fh: BinaryIO,
    part: Path,
    expected: RemoteFile | None,
    retries: int,
    progress: bool,
) -> str:
    attempt = 0
    while True:
        before = os.fstat(fh.fileno()).st_size
        try:
            return _download_attempt(session, url, fh, part, expected, progress)
        except DownloadError as exc:
            # Retry a connection that broke after bringing bytes; a server that cannot be
            # reached, an HTTP error or a full disk will not get better in a few seconds.
            grew = os.fstat(fh.fileno()).st_size > before
            if not (isinstance(exc.__cause__, requests.RequestException) and grew):
                raise
            if attempt >= retries:
                raise DownloadError(f"{exc} (resume with the same command)") from exc
            attempt += 1
            name = part.name.removesuffix(PART_SUFFIX)
            print(f"{name}: {exc}; resuming ({attempt}/{retries})", file=sys.stderr)
            time.sleep(0.5 * 2 ** (attempt - 1))


def _verify(
    part: Path, fh: BinaryIO, expected: RemoteFile | None, pinned: str | None, digest: str
) -> None:
    """Check size and hashes; a mismatching `.part` is deleted (resuming it cannot help)."""
    name = part.name.removesuffix(PART_SUFFIX)
    hub = expected or RemoteFile(name)
    checks = [
        ("the hub's size", hub.size, os.fstat(fh.fileno()).st_size),
        ("the hub's SHA-256", hub.sha256, digest),
        ("the pinned SHA-256", pinned.lower() if pinned else None, digest),
    ]
    for what, want, got in checks:
        if want is not None and want != got:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{name} does not match {what} (expected {want}, got {got}); "
                "the download was discarded"
            )


def _download_attempt(
    session: requests.Session,
    url: str,
    fh: BinaryIO,
    part: Path,
    expected: RemoteFile | None,
    progress: bool,
) -> str:
    """One GET (ranged when `part` has bytes) appending to `fh` (the open, locked `part`);
    returns the hex SHA-256 of the complete file."""
    name = part.name.removesuffix(PART_SUFFIX)
    expected_size = expected.size if expected else None
    have = os.fstat(fh.fileno()).st_size
    if expected_size is not None and have > expected_size:
        fh.truncate(0)  # longer than the file: not a prefix of it
        have = 0
    if expected_size is not None and have == expected_size and have:
        return sha256_file(part)  # a previous run got every byte
    response, start, total = _open_range(session, url, name, have)
    digest = hashlib.sha256()
    if start == 0 and have:
        print(f"{name}: the server sends the whole file again; starting over", file=sys.stderr)
        fh.truncate(0)
    elif start:
        with part.open("rb") as old:
            while block := old.read(CHUNK):
                digest.update(block)
    size = total if total is not None else expected_size
    with tqdm(
        total=size,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        file=sys.stderr,
        disable=None if progress else True,  # None: only on a terminal
        leave=False,
    ) as bar:
        _write_stream(response, fh, part, digest, bar)
    got = os.fstat(fh.fileno()).st_size
    if size is not None and got < size:
        # The server closed the connection early without an error from requests.
        raise DownloadError(
            f"connection closed after {_human(got)} of {_human(size)}"
        ) from requests.exceptions.ChunkedEncodingError("short read")
    return digest.hexdigest()


def download_model(
    dest: str | Path,
    *,
    model_id: str = MODEL_ID,
    revision: str = DEFAULT_REVISION,
    endpoint: str = DEFAULT_ENDPOINT,
    files: Sequence[str] = MODEL_FILES,
    sha256: str | None = None,
    retries: int = 3,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Download the model files into `dest` (created if needed).

    Files already in place are kept when they match the hub's (and the pinned) SHA-256, unless
    `force`. `sha256` pins the weights file (`pytorch_model.pt`).

    Returns:
        {file name: SHA-256 hex} of every file now in `dest`.

    Raises:
        DownloadError: with a one-line reason.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    endpoint = check_endpoint(endpoint)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise DownloadError("--sha256 must be 64 hexadecimal digits")
    directory = Path(dest)
    with requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        listing = fetch_listing(session, endpoint, model_id, revision)
        missing = [name for name in files if name not in listing]
        if missing:
            raise DownloadError(f"{model_id}@{revision} has no {', '.join(missing)}")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create {directory}: {exc.strerror or exc}") from exc
        fetch = [name for name in files if force or not (directory / name).is_file()]
        _check_free_space(directory, [listing[name] for name in fetch])

        hashes: dict[str, str] = {}
        for name in files:
            remote = listing[name]
            pinned = sha256 if name == WEIGHTS_FILE else None
            target = directory / name
            if name not in fetch:
                digest = sha256_file(target)
                wanted = {h for h in (remote.sha256, pinned) if h}
                if wanted and wanted != {digest}:
                    raise DownloadError(
                        f"{target} exists but its SHA-256 {digest} differs from"
                        f" {' / '.join(sorted(wanted))}; remove it or pass --force"
                    )
                log(f"{name}: already present, sha256 {digest}")
                hashes[name] = digest
                continue
            url = file_url(endpoint, model_id, revision, name)
            digest = download_file(
                session,
                url,
                target,
                expected=remote,
                pinned_sha256=pinned,
                retries=retries,
                progress=progress,
            )
            verified = "verified" if remote.sha256 or pinned else "not pinned"
            log(f"{name}: {_human(target.stat().st_size)}, sha256 {digest} ({verified})")
            hashes[name] = digest
    return hashes


def _check_free_space(directory: Path, files: Sequence[RemoteFile]) -> None:
    need = 0
    for remote in files:
        if remote.size is None:
            continue
        part = directory / (remote.path + PART_SUFFIX)
        have = part.stat().st_size if part.is_file() else 0
        need += max(remote.size - have, 0)
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if need > free:
        raise DownloadError(
            f"not enough free space in {directory}: need {_human(need)}, have {_human(free)}"
        )
