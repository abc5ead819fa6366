"""`m2fp.download` and `python -m m2fp download` against a local hub server on 127.0.0.1."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2fp import download
from m2fp.cli import main
from m2fp.download import MODEL_ID, DownloadError, download_model
from tests.support.hub_server import HubServer, HubState
from tests.support.paths import REPO
from tests.support.servers import free_port

WEIGHTS = os.urandom(3 * 1024 * 1024 + 123)  # several 1 MiB chunks, not a multiple of one
CONFIG = b'{"framework": "pytorch", "task": "image-segmentation"}\n'


def _state(**kwargs: object) -> HubState:
    files = {"configuration.json": CONFIG, "pytorch_model.pt": WEIGHTS}
    return HubState(model_id=MODEL_ID, files=files, **kwargs)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_requests(state: HubState, name: str) -> list[str | None]:
    """The Range header of each GET of file `name`."""
    return [rng for path, rng in state.requests if f"FilePath={name}" in path]


def _range_start(header: str | None) -> int:
    assert header is not None and header.startswith("bytes=") and header.endswith("-")
    return int(header[len("bytes=") : -1])


def _get(url: str, dest: Path, **kwargs: object) -> dict[str, str]:
    return download_model(dest, endpoint=url, progress=False, log=lambda _: None, **kwargs)


def test_full_download(tmp_path: Path) -> None:
    state = _state()
    with HubServer(state) as url:
        hashes = _get(url, tmp_path / "model")
    assert (tmp_path / "model" / "pytorch_model.pt").read_bytes() == WEIGHTS
    assert (tmp_path / "model" / "configuration.json").read_bytes() == CONFIG
    assert hashes == {"configuration.json": _sha(CONFIG), "pytorch_model.pt": _sha(WEIGHTS)}
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "configuration.json",
        "pytorch_model.pt",
    ]
    assert _file_requests(state, "pytorch_model.pt") == [None]
    # The URL scheme of ModelScope's hub.
    assert any(
        path == f"/api/v1/models/{MODEL_ID}/repo?Revision=master&FilePath=pytorch_model.pt"
        for path, _ in state.requests
    )


def test_second_run_keeps_verified_files(tmp_path: Path) -> None:
    state = _state()
    with HubServer(state) as url:
        first = _get(url, tmp_path)
        state.requests.clear()
        second = _get(url, tmp_path)
    assert first == second
    assert _file_requests(state, "pytorch_model.pt") == []


def test_dropped_connection_resumes_with_range(tmp_path: Path) -> None:
    drop = 1_500_000
    state = _state(drop_at=drop, drops_left=1)
    with HubServer(state) as url:
        hashes = _get(url, tmp_path, retries=2)
    assert (tmp_path / "pytorch_model.pt").read_bytes() == WEIGHTS
    assert hashes["pytorch_model.pt"] == _sha(WEIGHTS)
    first, resumed = _file_requests(state, "pytorch_model.pt")
    assert first is None
    # What was received up to the last whole chunk before the drop is kept.
    assert drop - download.CHUNK < _range_start(resumed) <= drop
    assert not (tmp_path / "pytorch_model.pt.part").exists()


def test_interrupted_run_leaves_only_part_then_next_run_resumes(tmp_path: Path) -> None:
    drop = 2_000_000
    state = _state(drop_at=drop, drops_left=1)
    with HubServer(state) as url:
        with pytest.raises(DownloadError, match="pytorch_model.pt|connection|Connection"):
            _get(url, tmp_path, retries=0)
        assert not (tmp_path / "pytorch_model.pt").exists()
        kept = (tmp_path / "pytorch_model.pt.part").stat().st_size
        assert drop - download.CHUNK < kept <= drop
        _get(url, tmp_path, retries=0)
    assert (tmp_path / "pytorch_model.pt").read_bytes() == WEIGHTS
    assert _file_requests(state, "pytorch_model.pt") == [None, f"bytes={kept}-"]


def test_server_ignoring_range_starts_over(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.pt.part").write_bytes(b"junk that is not a prefix")
    state = _state(ignore_range=True)
    with HubServer(state) as url:
        _get(url, tmp_path)
    assert (tmp_path / "pytorch_model.pt").read_bytes() == WEIGHTS


def test_corrupt_bytes_refused_and_nothing_left(tmp_path: Path) -> None:
    state = _state(corrupt=True)
    with HubServer(state) as url, pytest.raises(DownloadError, match="SHA-256") as err:
        _get(url, tmp_path)
    assert "discarded" in str(err.value)
    assert not (tmp_path / "configuration.json.part").exists()
    assert not (tmp_path / "configuration.json").exists()


def test_pinned_sha256_refuses_other_bytes(tmp_path: Path) -> None:
    state = _state(listing_sha256={"pytorch_model.pt": None, "configuration.json": None})
    with HubServer(state) as url, pytest.raises(DownloadError, match="pinned SHA-256"):
        _get(url, tmp_path, sha256="ab" * 32)
    assert not (tmp_path / "pytorch_model.pt").exists()
    assert not (tmp_path / "pytorch_model.pt.part").exists()
    # Unpinned and unpublished: accepted, and the hash is reported for pinning.
    with HubServer(state) as url:
        assert _get(url, tmp_path)["pytorch_model.pt"] == _sha(WEIGHTS)
    with HubServer(state) as url:
        assert _get(url, tmp_path, sha256=_sha(WEIGHTS).upper(), force=True)


def test_existing_file_with_other_hash_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.pt").write_bytes(b"someone else's weights")
    with HubServer(_state()) as url, pytest.raises(DownloadError, match="--force"):
        _get(url, tmp_path)
    assert (tmp_path / "pytorch_model.pt").read_bytes() == b"someone else's weights"


def test_http_404_is_a_clear_error(tmp_path: Path) -> None:
    with HubServer(_state()) as url, pytest.raises(DownloadError) as err:
        _get(url, tmp_path, model_id="damo/no-such-model")
    assert "HTTP 404" in str(err.value) and "no such model" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_http_404_on_a_listed_file(tmp_path: Path) -> None:
    state = _state(unserved=("pytorch_model.pt",))
    with HubServer(state) as url, pytest.raises(DownloadError) as err:
        _get(url, tmp_path)
    assert str(err.value).startswith("downloading pytorch_model.pt: HTTP 404")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configuration.json"]


def test_concurrent_download_of_the_same_file_refused(tmp_path: Path) -> None:
    with (tmp_path / "pytorch_model.pt.part").open("ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)  # as a running download holds it
        with HubServer(_state()) as url, pytest.raises(DownloadError, match="another download"):
            _get(url, tmp_path)
    assert not (tmp_path / "pytorch_model.pt").exists()


def test_file_missing_from_listing(tmp_path: Path) -> None:
    with HubServer(_state()) as url, pytest.raises(DownloadError, match="has no extra.bin"):
        _get(url, tmp_path, files=("configuration.json", "extra.bin"))


def test_no_network_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # a port nobody listens on
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1:.*refused"):
        _get(f"http://127.0.0.1:{port}", tmp_path)


def test_plain_http_only_to_loopback(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="https"):
        _get("http://example.com", tmp_path)
    assert download.check_endpoint("https://www.modelscope.cn/") == "https://www.modelscope.cn"


def test_disk_full_is_a_clear_error_and_resumable(tmp_path: Path) -> None:
    # Writes to /dev/full fail with ENOSPC, as on a full disk.
    (tmp_path / "configuration.json.part").symlink_to("/dev/full")
    with HubServer(_state()) as url, pytest.raises(DownloadError, match="disk full"):
        _get(url, tmp_path)
    assert not (tmp_path / "configuration.json").exists()
    assert (tmp_path / "configuration.json.part").is_symlink()  # not a regular file: kept


def test_cli_download_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with HubServer(_state()) as url:
        code = main(["download", "--dest", str(tmp_path), "--endpoint", url, "--quiet"])
        out, err = capsys.readouterr()
        assert code == 0
        assert f"M2FP_WEIGHTS_SHA256={_sha(WEIGHTS)}" in out
        assert f"sha256 {_sha(WEIGHTS)}" in err
        code = main(["download", "--dest", str(tmp_path / "x"), "--endpoint", url])
        assert code == 0
        capsys.readouterr()
        code = main(["download", "--dest", str(tmp_path), "--endpoint", url, "--sha256", "12"])
        out, err = capsys.readouterr()
        assert code == 1
        assert err.strip().count("\n") == 0 and "64 hexadecimal" in err


def test_cli_subprocess_http_error_exit(tmp_path: Path) -> None:
    with HubServer(_state()) as url:
        args = ["download", "--dest", str(tmp_path), "--endpoint", url, "--revision", "v9"]
        proc = subprocess.run(
            [sys.executable, "-m", "m2fp", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "HTTP 404" in lines[0]
