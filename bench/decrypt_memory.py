"""Peak memory of loading a large weights file into memory with `open_weights`.

Usage: .venv/bin/python bench/decrypt_memory.py [--mb 240] [--chunk-size BYTES] [--dir DIR]
       .venv/bin/python bench/decrypt_memory.py --r101      # a real R101 checkpoint + load_model

Default: writes a file of random bytes (a stand-in for pytorch_model.pt), encrypts it for a
secret key and for an RSA recipient, then for each case runs a fresh Python process that calls
`open_weights` (pinned) and reports its peak RSS (ru_maxrss). Prints each peak and its ratio to
the file size; the target for the encrypted cases is under 2.5x.

--r101: the checkpoint is the full M2FP R101 with seeded random weights, and each process runs
what the service runs, `load_model(dir, weights=open_weights(...))`, against the plain
`load_model(dir)`, so the figure includes torch and the model's own tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from security import model_crypto as mc  # noqa: E402

TARGET_RATIO = 2.5
MIB = 1024 * 1024


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _status_bytes(field: str) -> int:
    """VmRSS / VmHWM of /proc/self/status: this process image alone (ru_maxrss also counts
    what the parent held when it forked us; the parent here stays small, so both agree)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, model_dir: str, key_file: str, pin: str) -> None:
    """Runs in a fresh process: load, check, report JSON on stdout."""
    if mode == "model":
        import torch  # noqa: F401  (imported before the baseline is taken)

        from m2fp.build import load_model
    baseline = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    if mode == "bytes":
        bio = mc.open_weights(model_dir, key_file=key_file or None, expected_sha256=pin)
        size = len(bio.getbuffer())
    elif key_file:
        bio = mc.open_weights(model_dir, key_file=key_file, expected_sha256=pin)
        size = len(bio.getbuffer())
        load_model(model_dir, weights=bio)
    else:
        size = (Path(model_dir) / mc.WEIGHTS_FILE).stat().st_size
        load_model(model_dir)
    result = {
        "baseline": baseline,
        "peak": _peak_rss_bytes(),
        "hwm": _status_bytes("VmHWM"),
        "s": time.perf_counter() - t0,
        "n": size,
    }
    print(json.dumps(result))


def make_r101(model_dir: str) -> None:
    """Runs in its own process so that the parent, which forks the measured children, stays
    small."""
    import torch

    from m2fp.build import build_model, save_model_dir
    from m2fp.config import M2FPConfig

    torch.manual_seed(0)
    save_model_dir(build_model(M2FPConfig.r101()), model_dir)


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(16 * MIB, left))
            fh.write(block)
            left -= len(block)


def _secret_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _run_self(*args: str) -> str:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _make_dirs(root: Path, args: argparse.Namespace) -> tuple[Path, Path, Path, Path]:
    """plain/, secret/ and rsa/ model directories; returns them and the key files' dir."""
    plain, secret_dir, rsa_dir = (root / n for n in ("plain", "secret", "rsa"))
    if args.r101:
        _run_self("--make-r101", str(plain))
    else:
        plain.mkdir()
        _write_random(plain / mc.WEIGHTS_FILE, int(args.mb * 1_000_000))
    for d in (secret_dir, rsa_dir):
        d.mkdir()
        if args.r101:
            (d / "configuration.json").write_bytes((plain / "configuration.json").read_bytes())
    return plain, secret_dir, rsa_dir, root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=240.0, help="file size in MB (10^6 bytes)")
    parser.add_argument("--chunk-size", type=int, default=mc.DEFAULT_CHUNK_SIZE)
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    parser.add_argument("--r101", action="store_true", help="real R101 checkpoint + load_model")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--make-r101", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.make_r101:
        make_r101(args.make_r101)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain_dir, secret_dir, rsa_dir, root = _make_dirs(Path(tmp), args)
        plain = plain_dir / mc.WEIGHTS_FILE
        size, pin = plain.stat().st_size, mc.sha256_file(plain)
        secret, rsa_key = mc.generate_secret_key(), mc.generate_rsa_key(3072)
        key_file = _secret_file(root / "weights.key", mc.format_secret_key(secret).encode())
        rsa_file = _secret_file(root / "kiosk.pem", mc.private_key_pem(rsa_key))
        t0 = time.perf_counter()
        enc = secret_dir / mc.ENCRYPTED_WEIGHTS_FILE
        mc.encrypt_file(plain, enc, [secret], chunk_size=args.chunk_size)
        encrypt_s = time.perf_counter() - t0
        enc = rsa_dir / mc.ENCRYPTED_WEIGHTS_FILE
        mc.encrypt_file(plain, enc, [rsa_key.public_key()], chunk_size=args.chunk_size)
        what = "R101 checkpoint" if args.r101 else "random bytes"
        print(f"{what}: {size / MIB:.1f} MiB ({size} bytes), chunk size {args.chunk_size} bytes")
        print(f"encrypt (hash + encrypt, streaming): {encrypt_s:.2f} s")
        mode = "model" if args.r101 else "bytes"
        cases = [
            ("encrypted, secret key", secret_dir, key_file),
            ("encrypted, RSA envelope", rsa_dir, rsa_file),
            ("plaintext", plain_dir, None),
        ]
        peaks = {}
        for name, directory, key in cases:
            r = json.loads(_run_self("--child", mode, str(directory), str(key or ""), pin))
            assert r["n"] == size
            peaks[name] = r["peak"]
            print(
                f"{name:24s} peak RSS (ru_maxrss) {r['peak'] / MIB:6.1f} MiB"
                f" = {r['peak'] / size:.2f}x file; VmHWM {r['hwm'] / MIB:.1f} MiB;"
                f" before loading {r['baseline'] / MIB:.1f} MiB; load {r['s']:.2f} s"
            )
        worst = max(peaks[name] for name, _, key in cases if key is not None)
        if args.r101:
            extra = worst - peaks["plaintext"]
            print(
                f"decryption adds {extra / MIB:.1f} MiB = {extra / size:.2f}x file to the peak of"
                " load_model (the BytesIO alive while the state dict is read)"
            )
        else:
            verdict = "OK" if worst / size < TARGET_RATIO else "ABOVE TARGET"
            print(
                f"worst encrypted ratio {worst / size:.2f}x (target < {TARGET_RATIO}x): {verdict}"
            )


if __name__ == "__main__":
    main()
