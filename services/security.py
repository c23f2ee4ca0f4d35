"""API keys: shown once, stored as sha256; compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk-alignd-"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
