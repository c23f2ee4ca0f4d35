"""Object ids: a readable prefix and 24 random url-safe characters (OpenAI-like)."""

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return f"{prefix}-" + "".join(secrets.choice(_ALPHABET) for _ in range(24))
