"""The command line: `python -m security.model_crypto COMMAND ...`. Nothing imports it.

Commands: keygen, encrypt, decrypt-check, rewrap, hash, info (see docs/model-protection.md).
Every output file is written atomically (temporary name in the same directory, fsync, rename);
an input is never overwritten and an existing output only with --force. Progress bars go to
stderr when it is a terminal. Each failure prints one line on stderr and exits non-zero:
1 the file is refused (modified, wrong key, SHA-256 mismatch), 2 usage, 3 key problem,
4 anything else (missing file, existing output...).

As a command-line tool it reads its defaults from the environment itself: `--key-file`
defaults to $M2FP_WEIGHTS_KEY_FILE, `--sha256` to $M2FP_WEIGHTS_SHA256, and `--key-env VAR`
names the variable holding a key. The service reads the same variables through `Settings`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from security import model_crypto as mc
from security.model_crypto.container import SLOT_RSA_OAEP_SHA256, SLOT_SECRET_KEY

EXIT_REFUSED, EXIT_USAGE, EXIT_KEY, EXIT_OTHER = 1, 2, 3, 4


@contextlib.contextmanager
def _progress(args: argparse.Namespace, total: int, desc: str) -> Iterator[mc.Progress]:
    from tqdm import tqdm  # only the commands that read large files need it

    # disable=None: tqdm shows the bar only when stderr is a terminal.
    disable = True if args.quiet else None
    with tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=disable,
        leave=False,
    ) as bar:
        yield bar.update


def _weights_path(path: Path) -> Path:
    """A model directory means its encrypted weights if present, else its plaintext ones."""
    if not path.is_dir():
        return path
    encrypted = path / mc.ENCRYPTED_WEIGHTS_FILE
    return encrypted if encrypted.exists() else path / mc.WEIGHTS_FILE


def _is_encrypted(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(mc.MAGIC)) == mc.MAGIC
    except OSError as exc:
        raise mc.ModelProtectionError(f"cannot read {path}: {exc.strerror or exc}") from None


def _key_in_variable(name: str | None) -> mc.DecryptionKey | None:
    """The key held by environment variable `name`, None when it is unset or blank."""
    if not name:
        return None
    return mc.key_from_text(os.environ.get(name), source=f"environment variable {name}")


def _given_key(args: argparse.Namespace) -> mc.DecryptionKey | None:
    """The key of --key-file when given, else the one in the variable named by --key-env."""
    if args.key_file:
        return mc.read_key_file(args.key_file)
    return _key_in_variable(args.key_env)


def _source_key(args: argparse.Namespace) -> mc.DecryptionKey:
    key = _given_key(args)
    if key is None:
        raise mc.ModelKeyError(
            f"no key: pass --key-file, or set {mc.KEY_FILE_ENV} or {args.key_env or mc.KEY_ENV}"
        )
    return key


def _recipients(
    key_file: str | None, key_env: str | None, public_keys: list[str] | None
) -> list[mc.Recipient]:
    out: list[mc.Recipient] = []
    if key_file:
        key = mc.read_key_file(key_file)
        out.append(key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key)
    if key_env:
        key = _key_in_variable(key_env)
        if key is None:
            raise mc.ModelKeyError(f"environment variable {key_env} is not set")
        out.append(key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key)
    out += [mc.read_public_key(p) for p in public_keys or []]
    return out


def _ids(header: mc.EncryptedHeader) -> str:
    return ", ".join(header.key_ids)


# ----------------------------------------------------------------------------------- commands


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not args.rsa:
        key = mc.generate_secret_key()
        with mc.atomic_output(out, force=args.force, mode=0o600) as fh:
            fh.write(mc.format_secret_key(key).encode("ascii"))
        print(f"wrote weights key {out} (key id {key.key_id}, mode 0600)")
        print(f"use it with: {mc.KEY_FILE_ENV}={out.resolve()}")
        return 0
    public = Path(args.public_out) if args.public_out else _public_path(out)
    if public.resolve() == out.resolve():
        raise mc.ModelProtectionError("the public and private key files must differ")
    if public.exists() and not args.force:
        raise mc.ModelProtectionError(f"{public} already exists (use --force to replace it)")
    key = mc.generate_rsa_key(args.bits)
    with mc.atomic_output(out, force=args.force, mode=0o600) as fh:
        fh.write(mc.private_key_pem(key))
    with mc.atomic_output(public, force=args.force, mode=0o644) as fh:
        fh.write(mc.public_key_pem(key))
    print(f"wrote RSA-{args.bits} private key {out} (mode 0600) and public key {public}")
    print(f"key id {mc.key_id(key)}; encrypt with --recipient {public}; on the receiving box")
    print(f"set {mc.KEY_FILE_ENV} to the private key file")
    return 0


def _public_path(private: Path) -> Path:
    stem = private.name.removesuffix(".pem")
    return private.with_name(stem + ".pub.pem")


def cmd_encrypt(args: argparse.Namespace) -> int:
    src = Path(args.src)
    if src.is_dir():
        src = src / mc.WEIGHTS_FILE
    if not src.is_file():
        raise mc.ModelProtectionError(f"{src} does not exist or is not a file")
    if _is_encrypted(src):
        raise mc.ModelProtectionError(f"{src} is already encrypted (use rewrap to change keys)")
    dst = Path(args.output) if args.output else src.with_name(src.name + ".enc")
    recipients = _recipients(args.key_file, args.key_env, args.recipient)
    if not recipients:
        raise mc.ModelKeyError("give --key-file KEY, --key-env VAR or --recipient PUBLIC.pem")
    size = src.stat().st_size
    with _progress(args, 2 * size, "hash + encrypt") as progress:
        header = mc.encrypt_file(
            src,
            dst,
            recipients,
            chunk_size=args.chunk_size,
            force=args.force,
            progress=progress,
        )
    print(
        f"encrypted {src} -> {dst}: {header.plaintext_length} bytes in {header.chunks}"
        f" chunk{'s' * (header.chunks != 1)},"
        f" key id {_ids(header)}"
    )
    print(f"{mc.SHA256_ENV}={header.sha256}")
    print(f"the plaintext {src} is still there: remove it wherever it must not stay")
    return 0


def cmd_decrypt_check(args: argparse.Namespace) -> int:
    path = _weights_path(Path(args.src))
    key = _source_key(args)
    with _progress(args, path.stat().st_size, "decrypt-check") as progress:
        header = mc.verify_file(path, key, expected_sha256=args.sha256, progress=progress)
    pinned = ", matches the pin" if mc.normalize_sha256(args.sha256) else ""
    print(
        f"OK {path}: {header.plaintext_length} bytes, sha256 {header.sha256}{pinned},"
        f" key id {mc.key_id(key)}"
    )
    return 0


def cmd_rewrap(args: argparse.Namespace) -> int:
    src = _weights_path(Path(args.src))
    key = _source_key(args)
    recipients = _recipients(args.to_key_file, args.to_key_env, args.to_recipient)
    if not recipients:
        raise mc.ModelKeyError("give --to-key-file KEY, --to-key-env VAR or --to-recipient PUB")
    with _progress(args, src.stat().st_size, "rewrap") as progress:
        header = mc.rewrap_file(
            src,
            args.output,
            key,
            recipients,
            reencrypt=not args.keep_data_key,
            force=args.force,
            progress=progress,
        )
    how = "key slots replaced, body copied" if args.keep_data_key else "re-encrypted"
    print(f"{src} -> {args.output} ({how}): key id {_ids(header)}, sha256 {header.sha256}")
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    path = _weights_path(Path(args.path))
    if not path.is_file():
        raise mc.ModelProtectionError(f"{path} does not exist or is not a file")
    if not _is_encrypted(path):
        with _progress(args, path.stat().st_size, "sha256") as progress:
            print(f"{mc.sha256_file(path, progress=progress)}  {path}")
        return 0
    key = _given_key(args)
    if key is None:
        with path.open("rb") as fh:
            header = mc.read_header(fh, path)
        print(f"{header.sha256}  {path}")
        print(
            "note: SHA-256 of the plaintext as declared in the header, NOT verified; give the"
            " key (--key-file) to verify it",
            file=sys.stderr,
        )
        return 0
    with _progress(args, path.stat().st_size, "decrypt + sha256") as progress:
        header = mc.verify_file(path, key, progress=progress)
    print(f"{header.sha256}  {path}")
    print("note: SHA-256 of the decrypted plaintext (verified)", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    path = _weights_path(Path(args.path))
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise mc.ModelProtectionError(f"cannot open {path}: {exc.strerror or exc}") from None
    with fh:
        header = mc.read_header(fh, path)
    kinds = {SLOT_SECRET_KEY: "secret key", SLOT_RSA_OAEP_SHA256: "RSA-OAEP-SHA256"}
    print(f"file               {path} (format version {mc.FORMAT_VERSION}, AES-256-GCM)")
    print(f"plaintext          {header.plaintext_length} bytes, sha256 {header.sha256}")
    print(f"chunks             {header.chunks} of {header.chunk_size} bytes")
    for slot in header.slots:
        print(f"key slot           key id {slot.key_id.hex()} ({kinds[slot.kind]})")
    print("(unauthenticated: run decrypt-check with the key to verify)")
    return 0


# ------------------------------------------------------------------------------------ parser


def _add_source_key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-file",
        default=os.environ.get(mc.KEY_FILE_ENV) or None,
        help=f"key file (secret key or RSA private key); default ${mc.KEY_FILE_ENV}",
    )
    p.add_argument(
        "--key-env",
        default=mc.KEY_ENV,
        help="variable holding the key when no key file is given (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m security.model_crypto",
        description="Encrypt, check and hash M2FP weights (AES-256-GCM, decrypted in memory only).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "keygen", parents=[common], help="make a secret key file, or an RSA key pair (--rsa)"
    )
    p.add_argument("--out", "-o", required=True, help="key file to write (mode 0600)")
    p.add_argument("--rsa", action="store_true", help="RSA key pair for envelope mode")
    p.add_argument("--bits", type=int, default=3072, choices=(2048, 3072, 4096))
    p.add_argument("--public-out", help="public key file (default: OUT with .pub.pem)")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("encrypt", parents=[common], help="encrypt pytorch_model.pt (or any file)")
    p.add_argument("src", help="model directory or file")
    p.add_argument("--output", "-o", help="default: SRC.enc (pytorch_model.pt.enc)")
    p.add_argument("--key-file", help="secret key file to encrypt with")
    p.add_argument("--key-env", help="environment variable holding the secret key")
    p.add_argument(
        "--recipient", action="append", metavar="PUBLIC.pem", help="RSA public key (repeatable)"
    )
    p.add_argument("--chunk-size", type=int, default=mc.DEFAULT_CHUNK_SIZE, help="bytes")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_encrypt)

    p = sub.add_parser(
        "decrypt-check", parents=[common], help="decrypt in memory and verify every byte"
    )
    p.add_argument("src", help="model directory or .enc file")
    _add_source_key(p)
    p.add_argument(
        "--sha256",
        default=os.environ.get(mc.SHA256_ENV) or None,
        help=f"expected SHA-256 of the plaintext; default ${mc.SHA256_ENV}",
    )
    p.set_defaults(func=cmd_decrypt_check)

    p = sub.add_parser(
        "rewrap", parents=[common], help="re-encrypt for a new key or new recipients"
    )
    p.add_argument("src", help="model directory or .enc file")
    p.add_argument("--output", "-o", required=True, help="new encrypted file")
    _add_source_key(p)
    p.add_argument("--to-key-file", help="new secret key file")
    p.add_argument("--to-key-env", help="environment variable holding the new secret key")
    p.add_argument("--to-recipient", action="append", metavar="PUBLIC.pem", help="repeatable")
    p.add_argument(
        "--keep-data-key",
        action="store_true",
        help="only replace the key slots (fast; not a rotation after a leak)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_rewrap)

    p = sub.add_parser(
        "hash", parents=[common], help="SHA-256 of the (decrypted) weights: the value to pin"
    )
    p.add_argument("path", help="model directory or file")
    _add_source_key(p)
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser(
        "info", parents=[common], help="show an encrypted file's header (no key needed)"
    )
    p.add_argument("path", help="model directory or .enc file")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except mc.ModelIntegrityError as exc:
        code, message = EXIT_REFUSED, str(exc)
    except mc.ModelKeyError as exc:
        code, message = EXIT_KEY, str(exc)
    except mc.ModelProtectionError as exc:
        code, message = EXIT_OTHER, str(exc)
    except OSError as exc:
        code, message = EXIT_OTHER, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
