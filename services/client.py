"""An HTTP client of the api, used by the CLI and the demo (and usable from scripts)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

from services.errors import AlignError


class ApiError(AlignError):
    """The api answered with an error envelope (or, from a proxy in front of it, any error)."""

    def __init__(self, status: int, body: dict[str, Any]):
        error = body.get("error") or {}
        super().__init__(error.get("message") or str(body), param=error.get("param"),
                         code=error.get("code"))
        self.status_code = status
        self.error_type = error.get("type", "error")


class ApiUnavailable(AlignError):
    """The api could not be asked: nothing listens at its URL, it did not answer in time, or
    the connection broke. The httpx error is the ``__cause__``."""

    def __init__(self, message: str, base_url: str):
        super().__init__(message)
        self.base_url = base_url

    @property
    def refused(self) -> bool:
        """Nothing accepted the connection: the api is most likely not running."""
        return isinstance(self.__cause__, httpx.ConnectError)


@dataclass
class ModelContent:
    """What `AlignClient.model_content` yields: an archive to read, or an export under way."""

    stream: io.RawIOBase | None = None
    """The tar archive's bytes, as they arrive."""
    size: int | None = None
    """The archive's length in bytes, when the api said it."""
    export: dict[str, Any] | None = None
    """The merge's status object (``status``: queued or running) while there is no archive."""
    retry_after: float = 2.0
    """Seconds to wait before asking again, while ``export``."""


class _ResponseReader(io.RawIOBase):
    """A streamed response body as a file object (what `tarfile`'s stream mode reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.pending, self.read_bytes = chunks, b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = chunk
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        self.read_bytes += size
        return size


def _seconds(value: str | None, default: float = 2.0) -> float:
    try:
        return max(float(value), 0.0) if value is not None else default
    except ValueError:
        return default


class AlignClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0):
        self.http = httpx.Client(base_url=base_url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {api_key}"})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else {}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, or ApiError for a 4xx/5xx and ApiUnavailable when none came."""
        with self._reaching():
            response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_body(response))
        return response

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """httpx's transport errors (while sending, or while reading a streamed body) as
        ApiUnavailable."""
        url = str(self.http.base_url).rstrip("/")
        try:
            yield
        except httpx.ConnectError as exc:
            raise ApiUnavailable(f"cannot reach the alignd api at {url} ({exc})", url) from exc
        except httpx.TimeoutException as exc:
            raise ApiUnavailable(f"the alignd api at {url} did not answer within "
                                 f"{self.http.timeout.read:g} s", url) from exc
        except httpx.TransportError as exc:
            raise ApiUnavailable(f"the connection to the alignd api at {url} broke: "
                                 f"{exc or type(exc).__name__}", url) from exc

    @contextmanager
    def model_content(self, model_id: str, merged: bool = False) -> Iterator[ModelContent]:
        """``GET /v1/models/{id}/content``: the model's tar archive, streamed (read it from
        the yielded object's ``stream`` inside the ``with``), or for ``merged`` while a worker
        merges the adapter, the export's status (``export``) and no stream."""
        params = {"merged": "true"} if merged else {}
        with self._reaching(), self.http.stream(
                "GET", f"/v1/models/{model_id}/content", params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, _error_body(response))
            if response.status_code == 202:
                response.read()
                yield ModelContent(export=response.json(),
                                   retry_after=_seconds(response.headers.get("retry-after")))
                return
            size = response.headers.get("content-length")
            yield ModelContent(stream=_ResponseReader(response.iter_bytes()),
                               size=int(size) if size and size.isdigit() else None)

    # admin
    def create_project(self, name: str) -> dict[str, Any]:
        return self._call("POST", "/v1/admin/projects", json={"name": name})

    def list_projects(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/admin/projects")["data"]

    def create_api_key(self, project_id: str, name: str = "default") -> dict[str, Any]:
        return self._call("POST", f"/v1/admin/projects/{project_id}/api_keys", json={"name": name})

    def declare_base_model(self, model_id: str, *, path: str | None = None,
                           hub_id: str | None = None,
                           trust_remote_code: bool = False) -> dict[str, Any]:
        body = {"id": model_id, "path": path, "hub_id": hub_id,
                "trust_remote_code": trust_remote_code}
        return self._call("POST", "/v1/admin/models",
                          json={k: v for k, v in body.items() if v is not None})

    def list_base_models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/admin/models")["data"]

    def remove_base_model(self, model_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/admin/models/{model_id}")

    # files
    def upload_file(self, path: Path, purpose: str) -> dict[str, Any]:
        with path.open("rb") as handle:
            return self._call("POST", "/v1/files", data={"purpose": purpose},
                              files={"file": (path.name, handle, "application/jsonl")})

    def list_files(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/files")["data"]

    # jobs
    def create_job(self, **body: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/fine_tuning/jobs",
                          json={k: v for k, v in body.items() if v is not None})

    def list_jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/fine_tuning/jobs", params={"limit": limit})["data"]

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")

    def events_since(self, job_id: str, after: str | None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"order": "asc", "limit": 1000}
        if after:
            params["after"] = after
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params=params)["data"]

    def metrics(self, job_id: str, names: list[str] | None = None,
                after_step: int | None = None) -> list[dict[str, Any]]:
        """Each metric's points, only those past ``after_step`` when it is given."""
        params: dict[str, Any] = {"name": names} if names else {}
        if after_step is not None:
            params["after_step"] = after_step
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/metrics", params=params)["data"]

    def tensorboard_events(self, job_id: str) -> tuple[str, bytes]:
        """The job's metrics as a TensorBoard events file: (its file name, its bytes)."""
        response = self._send("GET", f"/v1/fine_tuning/jobs/{job_id}/metrics",
                              params={"format": "tensorboard"})
        disposition = response.headers.get("content-disposition", "")
        name = disposition.partition('filename="')[2].rstrip('"')
        return Path(name).name or f"events.out.tfevents.{job_id}", response.content

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints")["data"]

    def list_models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models")["data"]

    def follow(self, job_id: str, poll: float = 1.0) -> Iterator[tuple[dict[str, Any] | None,
                                                                        dict[str, Any]]]:
        """Yield (new event, job) for each event and (None, job) once per poll, until the job
        reaches a terminal state; the last pair is (None, the job as it ended). The job is read
        before its events, so every event up to and including the terminal transition
        (written with the status) is yielded, though maybe with the job as it was before."""
        after = None
        while True:
            job = self.get_job(job_id)
            for event in self.events_since(job_id, after):
                after = event["id"]
                yield event, job
            yield None, job
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return
            time.sleep(poll)


def _error_body(response: httpx.Response) -> dict[str, Any]:
    """The error envelope, or one made from a body that is not one (a proxy's HTML page)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    text = " ".join(response.text.split())[:200]
    return {"error": {"message": text or response.reason_phrase, "type": "http_error"}}
