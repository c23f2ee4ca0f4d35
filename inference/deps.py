"""Dependencies: a route's signature reads like a sentence (`generator: GeneratorDep`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from inference.serving import Generator
from inference.state import InferenceState

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


def get_state(request: Request) -> InferenceState:
    return request.app.state.alignd  # type: ignore[no-any-return]


StateDep = Annotated[InferenceState, Depends(get_state)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_project_id(state: StateDep, credentials: Credentials) -> str | None:
    """The caller's project, or None (every model visible) when keys are not required."""
    if not state.settings.require_api_key:
        return None
    secret = credentials.credentials if credentials is not None else None
    caller = (await state.keys.caller(secret)).require("generate")
    await state.limiter.admit_async(caller.key_id)
    return caller.project_id


def get_generator(state: StateDep) -> Generator:
    return state.generator


ProjectId = Annotated[str | None, Depends(get_project_id)]
GeneratorDep = Annotated[Generator, Depends(get_generator)]
