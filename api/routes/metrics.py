"""/metrics: the api's Prometheus metrics (requests, jobs by state, job queue depths)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import StateDep
from services.web import metrics_access

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(request: Request, state: StateDep) -> Response:
    metrics_access(request, state.settings)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
