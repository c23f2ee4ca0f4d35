"""A job's reward spec, checked with the reward service when the job is created.

The reward service is the one judge of a spec (its graders, templates and python source, and
which reward models a project may use), so the api asks it rather than keep a second copy of
those rules: one placeholder item is scored with the spec on behalf of the job's project. A
refusal becomes the job's 400 at the spec's path; nothing is stored. A service that cannot be
reached gives no verdict: the job is created, and its worker retries the service and fails the
job with the service's own message if the spec is bad.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.errors import InvalidRequest, NotFound, ServiceUnavailable
from services.reward_client import RewardClient

PLACEHOLDER = {"prompt": "", "response": "", "item": {}}
"""A placeholder item: a spec-level error is refused before any item is scored, and an item
the grader cannot score (say, a template that reads {{item.answer}}) only yields an item error,
which says nothing about the spec."""


class RewardSpecCheck:
    def __init__(self, reward_url: str, service_key: str | None, timeout: float = 30.0):
        self.reward_url, self.service_key, self.timeout = reward_url, service_key, timeout

    def __call__(self, spec: dict[str, Any], project_id: str, param: str) -> bool:
        """True when the service accepted ``spec`` for ``project_id``, False when it could not
        be asked; raises InvalidRequest or NotFound (at ``param``) when it refused it."""
        try:
            asyncio.run(self._score(spec, project_id, param))
        except ServiceUnavailable:
            return False
        except NotFound as exc:  # a model the spec names: the job's request is what is wrong
            raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from exc
        return True

    async def _score(self, spec: dict[str, Any], project_id: str, param: str) -> None:
        client = RewardClient(self.reward_url, timeout=self.timeout,
                              service_key=self.service_key)
        try:
            await client.score([PLACEHOLDER], spec, param=param, project=project_id)
        finally:
            await client.aclose()
