"""`deploy/local/ensure-services.sh` (what `make test` runs first) reads the same
ALIGND_TEST_POSTGRES and ALIGND_TEST_REDIS as the suite: it checked 127.0.0.1:5432 and :6379
whatever they said."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.web import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "ensure-services.sh"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_the_script_uses_the_configured_addresses() -> None:
    import redis

    port = free_port()
    env = {**os.environ, "ALIGND_TEST_REDIS": f"redis://127.0.0.1:{port}",
           "ALIGND_TEST_POSTGRES": os.environ.get(
               "ALIGND_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")}
    try:
        result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert f"Redis (127.0.0.1:{port}) are up" in result.stdout
        assert redis.Redis(port=port).ping()  # started where it was told to look
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], check=False,
                       capture_output=True, timeout=30)
