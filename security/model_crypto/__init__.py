"""Model file protection: SHA-256 pinning and encryption at rest, decrypted only in memory.

    keys.py        secret keys and RSA key pairs: parsing, key files (permissions), key ids
    container.py   the encrypted file format: header, key slots, authenticated chunks
    encryption.py  whole files: encrypt, decrypt into memory, verify, rewrap
    pinning.py     SHA-256 of the plaintext and the pin check
    atomic.py      output files written atomically
    weights.py     the model directory's rules: `open_weights`, `check_weights` (the service)
    __main__.py    the command line, `python -m security.model_crypto` (imported by nothing)

Nothing here imports torch or Flask or reads the environment (the command line aside), and no
plaintext is ever written to disk. See docs/model-protection.md.
"""

from security.model_crypto.atomic import atomic_output
from security.model_crypto.container import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    INTEGRITY_MESSAGE,
    MAGIC,
    EncryptedHeader,
    read_header,
)
from security.model_crypto.encryption import (
    decrypt_to_memory,
    encrypt_file,
    rewrap_file,
    verify_file,
)
from security.model_crypto.exceptions import (
    ModelIntegrityError,
    ModelKeyError,
    ModelProtectionError,
)
from security.model_crypto.keys import (
    KEY_ENV,
    KEY_FILE_ENV,
    DecryptionKey,
    Recipient,
    SecretKey,
    format_secret_key,
    generate_rsa_key,
    generate_secret_key,
    key_from_text,
    key_id,
    parse_decryption_key,
    parse_secret_key,
    private_key_pem,
    public_key_pem,
    read_key_file,
    read_public_key,
    resolve_key,
)
from security.model_crypto.pinning import (
    SHA256_ENV,
    Progress,
    check_pin,
    normalize_sha256,
    sha256_file,
)
from security.model_crypto.weights import (
    CONFIG_FILE,
    ENCRYPTED_WEIGHTS_FILE,
    WEIGHTS_FILE,
    WeightsCheck,
    check_weights,
    open_weights,
)

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_CHUNK_SIZE",
    "ENCRYPTED_WEIGHTS_FILE",
    "FORMAT_VERSION",
    "INTEGRITY_MESSAGE",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MAGIC",
    "SHA256_ENV",
    "WEIGHTS_FILE",
    "DecryptionKey",
    "EncryptedHeader",
    "ModelIntegrityError",
    "ModelKeyError",
    "ModelProtectionError",
    "Progress",
    "Recipient",
    "SecretKey",
    "WeightsCheck",
    "atomic_output",
    "check_pin",
    "check_weights",
    "decrypt_to_memory",
    "encrypt_file",
    "format_secret_key",
    "generate_rsa_key",
    "generate_secret_key",
    "key_from_text",
    "key_id",
    "normalize_sha256",
    "open_weights",
    "parse_decryption_key",
    "parse_secret_key",
    "private_key_pem",
    "public_key_pem",
    "read_header",
    "read_key_file",
    "read_public_key",
    "resolve_key",
    "rewrap_file",
    "sha256_file",
    "verify_file",
]
