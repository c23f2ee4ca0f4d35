"""What the end-to-end tests share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """A data folder outside pytest's temporary root. Run as root, pgserver runs PostgreSQL as
    the `pgserver` user, which must reach the folder; another pytest session on the machine
    resets /tmp/pytest-of-root to 0700, after which pg_ctl cannot stop a server under it."""
    root = Path(tempfile.mkdtemp(prefix="alignd-e2e-"))
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)
