"""Keys shared by the tests of `security.model_crypto` (an RSA key takes a moment to make)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from security import model_crypto as mc


@pytest.fixture(scope="session")
def secret() -> mc.SecretKey:
    return mc.generate_secret_key()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return mc.generate_rsa_key(2048)
