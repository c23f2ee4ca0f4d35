"""The reward service's HTTP client, for every caller that scores over the network
(inference's best-of-N, the trainer's value-model rollouts). Each call carries the current
request id (`X-Request-ID`), so the reward service's logs name the request or job it serves."""

from __future__ import annotations

from typing import Any

import httpx

from services.errors import InvalidRequest, NotFound, ServiceUnavailable
from services.observability import request_id_headers

PROJECT_HEADER = "X-Alignd-Project"
"""With the service key: the project whose reward models a request may use."""


class RewardClient:
    """``service_key`` (the deployment's admin key) lets an alignd service score on behalf of
    the project a request or job belongs to, named per call."""

    def __init__(self, base_url: str, timeout: float = 300.0, *,
                 service_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {service_key}"} if service_key else {}
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def score(self, items: list[dict[str, Any]], reward: dict[str, Any],
                    param: str = "reward", project: str | None = None) -> list[dict[str, Any]]:
        """The service's results (`{"index", "score", "parts", "error"}`), in item order.

        Its 4xx errors become this service's, with their param moved under `param` (a spec
        error at `reward.operation` is reported at `<param>.operation`); an unreachable or
        failing service is a ServiceUnavailable naming the URL."""
        url = f"{self.base_url}/v1/score"
        try:
            headers = {**request_id_headers(), **({PROJECT_HEADER: project} if project else {})}
            response = await self.http.post("/v1/score", json={"items": items, "reward": reward},
                                            headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"the reward service at {url} is unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code == 200:
            return sorted(response.json()["data"], key=lambda row: row["index"])
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {"message": response.text[:500]}
        message = str(error.get("message") or response.text[:500])
        their_param = error.get("param")
        ours = param if not their_param else (
            param + their_param[len("reward"):] if their_param.startswith("reward") else param)
        if response.status_code in (401, 403):  # our own key, not the caller's request
            raise ServiceUnavailable(
                f"the reward service at {url} refused this service's key ({message}); "
                "ALIGND_ADMIN_KEY must be the same for every alignd service")
        if response.status_code == 404:
            raise NotFound(message, param=ours, code=error.get("code"))
        if 400 <= response.status_code < 500:
            raise InvalidRequest(message, param=ours, code=error.get("code"))
        raise ServiceUnavailable(
            f"the reward service at {url} answered {response.status_code}: {message}")
