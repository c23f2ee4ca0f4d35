"""Dependencies: a route's signature reads like a sentence (`scorer: ScorerDep`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from reward_service.metrics import RewardMetrics
from reward_service.scorer import Scorer
from reward_service.state import RewardState
from services.security import same_secret

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


def get_state(request: Request) -> RewardState:
    return request.app.state.alignd  # type: ignore[no-any-return]


StateDep = Annotated[RewardState, Depends(get_state)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_project_id(
    state: StateDep, credentials: Credentials,
    acting_for: Annotated[str | None, Header(
        alias="X-Alignd-Project",
        description="With the admin key: the project an alignd service scores for.")] = None,
) -> str | None:
    """Whose reward models the caller may use: its key's project; for an alignd service (the
    admin key) the project it names, or every project's when it names none."""
    secret = credentials.credentials if credentials is not None else None
    admin = state.settings.admin_key.get_secret_value()
    if not state.settings.require_api_key or (secret and same_secret(secret, admin)):
        return acting_for
    caller = (await state.keys.caller(secret)).require("score")
    await state.limiter.admit_async(caller.key_id)
    return caller.project_id


def get_scorer(state: StateDep) -> Scorer:
    return state.scorer


def get_metrics(state: StateDep) -> RewardMetrics:
    return state.metrics


ProjectId = Annotated[str | None, Depends(get_project_id)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
MetricsDep = Annotated[RewardMetrics, Depends(get_metrics)]
