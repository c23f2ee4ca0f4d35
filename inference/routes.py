"""/v1/models, /v1/completions, /v1/chat/completions and /metrics: HTTP only; the work is in
`Generator` (serving) and `formatting`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from inference.deps import GeneratorDep, ProjectId, StateDep
from inference.formatting import respond
from inference.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    ModelObject,
)
from services.web import ERROR_RESPONSES, metrics_access

router = APIRouter(tags=["generation"], responses=ERROR_RESPONSES)


def _http(answer: BaseModel | AsyncIterator[str]) -> BaseModel | StreamingResponse:
    if isinstance(answer, BaseModel):
        return answer
    return StreamingResponse(answer, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, generator: GeneratorDep,
                      project: ProjectId) -> BaseModel | StreamingResponse:
    prepared = await generator.prepare(body, project)
    return _http(await respond(generator, prepared, chat=False))


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, generator: GeneratorDep,
                           project: ProjectId) -> BaseModel | StreamingResponse:
    prepared = await generator.prepare(body, project)
    return _http(await respond(generator, prepared, chat=True))


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: StateDep, project: ProjectId) -> ModelList:
    models = await asyncio.to_thread(state.catalog.listed, project)
    return ModelList(data=[
        ModelObject(id=m.id, created=m.created, owned_by=m.owned_by, kind=m.kind,
                    base_model=m.base_model) for m in models])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, state: StateDep) -> Response:
    metrics_access(request, state.settings)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
