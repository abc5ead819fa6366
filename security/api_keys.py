"""API keys: a file of SHA-256 hashes, constant-time lookup, and a CLI that issues keys.

The keys file (`M2FP_API_KEYS_FILE`) is JSON and holds no key, only hashes:

    {"keys": [
      {"id": "editor-1", "sha256": "<64 hex digits>", "limit": "100 per minute"},
      {"id": "kiosk", "sha256": "<64 hex digits>"}
    ]}

- `id`: 1-64 characters from `A-Z a-z 0-9 . _ -`, unique; the audit log and the rate limiter
  use it to name the caller.
- `sha256`: the SHA-256 of the key (lower or upper case hex), unique.
- `limit` (optional): that key's own rate limit in flask-limiter's notation
  (`"100 per minute"`, `"10/second; 1000/day"`); without it the service's default applies.

Keys are 256-bit random strings (`secrets.token_urlsafe(32)`) with an `m2fp_` prefix that secret
scanners can look for, so a plain SHA-256 is enough (no salt or slow hash: nothing to guess).
`ApiKeyStore.lookup` hashes the presented key and compares it with every entry with
`hmac.compare_digest`, without stopping at a match. Nothing here logs or prints a key, and error
messages about the file name the entry (position and id), never a hash.

CLI (`python -m security.api_keys`):

    new --id NAME [--limit "100 per minute"] [--file PATH]   issue a key: the key alone on
        stdout, once; the hashed entry is added to PATH (default: $M2FP_API_KEYS_FILE) by
        writing a temporary file beside it (mode 0600) and renaming it over the old one.
        Without a file, the entry to add is printed on stderr.
    list [--file PATH]                                        ids and limits
    revoke --id NAME [--file PATH]                            remove an entry
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import limits

KEY_PREFIX = "m2fp_"
MAX_PRESENTED_LENGTH = 512  # a longer header value is no key of ours: refuse before hashing
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = {"id", "sha256", "limit"}


class ApiKeyFileError(ValueError):
    """The keys file is missing or malformed; the message names the entry, never a hash."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    limit: str | None = None


class ApiKeyStore:
    """The keys of one keys file, looked up by the SHA-256 of the presented key."""

    def __init__(self, entries: Iterable[tuple[ApiKey, str]] = ()) -> None:
        """`entries`: (key, sha256 hex digest of the key) pairs, already validated."""
        self._entries = [(key, bytes.fromhex(digest)) for key, digest in entries]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ApiKeyStore:
        return cls(_read_entries(Path(path)))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ApiKeyStore({len(self._entries)} keys)"

    @property
    def keys(self) -> list[ApiKey]:
        return [key for key, _ in self._entries]

    def lookup(self, presented: str | None) -> ApiKey | None:
        """The key whose hash matches the SHA-256 of `presented`, else None.

        Every entry is compared, in constant time each, whether or not one matched already:
        the time taken says nothing about which entry, if any, matched.
        """
        if not presented or len(presented) > MAX_PRESENTED_LENGTH:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for key, expected in self._entries:
            if hmac.compare_digest(digest, expected):
                found = key
        return found


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as the keys file stores it."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    """A fresh key: the prefix and 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


# ------------------------------------------------------------------------------ the file


def _read_entries(path: Path) -> list[tuple[ApiKey, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ApiKeyFileError(f"{path}: no such keys file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyFileError(
            f"{path}: cannot read the keys file ({exc.__class__.__name__})"
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:  # its message holds a position, not the content
        raise ApiKeyFileError(f"{path}: not valid JSON: {exc}") from None
    return _parse_document(document, str(path))


def _parse_document(document: object, where: str) -> list[tuple[ApiKey, str]]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ApiKeyFileError(f'{where}: expected an object {{"keys": [...]}}')
    entries: list[tuple[ApiKey, str]] = []
    ids: set[str] = set()
    digests: set[str] = set()
    for index, raw in enumerate(document["keys"]):
        entry = _parse_entry(raw, f"{where}: keys[{index}]")
        key, digest = entry
        if key.id in ids:
            raise ApiKeyFileError(f"{where}: keys[{index}]: the id {key.id!r} is used twice")
        if digest in digests:
            raise ApiKeyFileError(
                f"{where}: keys[{index}] ({key.id!r}): the same key hash as an earlier entry"
            )
        ids.add(key.id)
        digests.add(digest)
        entries.append(entry)
    return entries


def _parse_entry(raw: object, where: str) -> tuple[ApiKey, str]:
    if not isinstance(raw, dict):
        raise ApiKeyFileError(f"{where}: expected an object with id and sha256")
    key_id = raw.get("id")
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise ApiKeyFileError(f"{where}: id must be 1-64 characters from A-Z a-z 0-9 . _ -")
    where = f"{where} ({key_id!r})"
    unknown = sorted(str(name) for name in set(raw) - _FIELDS)
    if unknown:
        raise ApiKeyFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        hint = " (the hash of the key, never the key itself)"
        raise ApiKeyFileError(f"{where}: sha256 must be 64 hexadecimal digits{hint}")
    limit = raw.get("limit")
    if limit is not None:
        if not isinstance(limit, str):
            raise ApiKeyFileError(f"{where}: limit must be a string such as '100 per minute'")
        try:
            limits.parse_many(limit)
        except ValueError:
            raise ApiKeyFileError(
                f"{where}: limit {limit!r} is not a rate limit such as '100 per minute'"
            ) from None
    return ApiKey(id=key_id, limit=limit), digest.lower()


def _load_document(path: Path) -> dict:
    """The keys file as JSON (validated), or an empty one when it does not exist yet."""
    if not path.exists():
        return {"keys": []}
    _read_entries(path)
    return json.loads(path.read_text(encoding="utf-8"))


def _write_atomically(path: Path, document: dict) -> None:
    """Write beside `path` with mode 0600, flush to disk, then rename over it: readers see the
    old file or the new one, never half of one."""
    text = json.dumps(document, indent=2) + "\n"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ------------------------------------------------------------------------------------ CLI


def _file_argument(value: str | None) -> Path | None:
    value = value or os.environ.get("M2FP_API_KEYS_FILE") or None
    return Path(value) if value else None


def _cmd_new(args: argparse.Namespace) -> int:
    if not _ID.fullmatch(args.id):
        raise ApiKeyFileError("--id must be 1-64 characters from A-Z a-z 0-9 . _ -")
    key = new_key()
    entry = {"id": args.id, "sha256": hash_key(key)}
    if args.limit is not None:
        entry["limit"] = args.limit
    _parse_entry(entry, "the new key")  # the checks the service applies at start
    path = _file_argument(args.file)
    if path is not None:
        document = _load_document(path)
        if any(existing.get("id") == args.id for existing in document["keys"]):
            raise ApiKeyFileError(f"{path}: the id {args.id!r} exists already (revoke it first)")
        document["keys"].append(entry)
        _parse_document(document, str(path))
        _write_atomically(path, document)
    print(key)
    print(f"API key {args.id!r} issued: it is shown once, store it now.", file=sys.stderr)
    if path is not None:
        print(f"Added its hash to {path}; restart the service to use it.", file=sys.stderr)
    else:
        print('Add this entry to the "keys" list of the keys file:', file=sys.stderr)
        print(json.dumps(entry), file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    path = _required_file(args.file)
    for key in ApiKeyStore.from_file(path).keys:
        print(f"{key.id}\t{key.limit or '(default limit)'}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    path = _required_file(args.file)
    document = _load_document(path)
    kept = [entry for entry in document["keys"] if entry.get("id") != args.id]
    if len(kept) == len(document["keys"]):
        raise ApiKeyFileError(f"{path}: no key with the id {args.id!r}")
    _write_atomically(path, {**document, "keys": kept})
    print(f"Revoked {args.id!r} in {path}; restart the service to apply.", file=sys.stderr)
    return 0


def _required_file(value: str | None) -> Path:
    path = _file_argument(value)
    if path is None:
        raise ApiKeyFileError("no keys file: pass --file or set M2FP_API_KEYS_FILE")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m security.api_keys", description="Issue and manage API keys."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    file_help = "the keys file (default: $M2FP_API_KEYS_FILE)"
    new = commands.add_parser("new", help="issue a key; prints it once")
    new.add_argument("--id", required=True, help="a name for the key, e.g. editor-1")
    new.add_argument("--limit", help='its own rate limit, e.g. "100 per minute"')
    new.add_argument("--file", help=file_help + "; without one, print the entry to add")
    new.set_defaults(run=_cmd_new)
    listing = commands.add_parser("list", help="ids and limits (no hashes)")
    listing.add_argument("--file", help=file_help)
    listing.set_defaults(run=_cmd_list)
    revoke = commands.add_parser("revoke", help="remove a key")
    revoke.add_argument("--id", required=True)
    revoke.add_argument("--file", help=file_help)
    revoke.set_defaults(run=_cmd_revoke)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ApiKeyFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


__all__ = ["ApiKey", "ApiKeyFileError", "ApiKeyStore", "hash_key", "main", "new_key"]

if __name__ == "__main__":
    sys.exit(main())
