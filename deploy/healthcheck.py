"""Container health checks with nothing but the image's Python (no curl in slim images).

    python healthcheck.py http://127.0.0.1:8000/readyz   exit 0 when the URL answers 2xx
    python healthcheck.py worker                         exit 0 when this host's Celery worker
                                                         answers a broadcast ping
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request


def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def worker_ok(timeout: float = 5.0) -> bool:
    from services.celery_app import make_celery
    from services.settings import WorkerSettings

    app = make_celery(WorkerSettings())
    replies = app.control.ping(timeout=timeout)
    suffix = "@" + socket.gethostname()
    return any(node.endswith(suffix) for reply in replies for node in reply)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    healthy = worker_ok() if argv[0] == "worker" else http_ok(argv[0])
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
