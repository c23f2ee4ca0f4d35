"""/v1/models: the registry — declared base models and every model a job produced."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.deps import ModelContentDep, ProjectId, SessionDep, StateDep
from api.model_content import RETRY_AFTER_S, PendingExport
from api.presenters import model_object
from api.protocol import Deleted, ListObject, ModelExport, ModelObject
from services import registry
from services.invalidation import notify_deleted_model
from services.model_archive import tar_stream
from services.web import ERROR_RESPONSES

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ListObject[ModelObject])
def list_models(session: SessionDep, project_id: ProjectId) -> ListObject[ModelObject]:
    rows = registry.visible_models(session, project_id)
    parents = {m.id: m.base_model for m in rows}  # a model's lineage is visible with it
    return ListObject[ModelObject](
        data=[model_object(m, registry.root_of(m.id, parents.get)) for m in rows])


TAR_ARCHIVE = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}


# Before `/{model_id:path}`, which would take ".../content" as part of an id.
@router.get("/{model_id:path}/content", response_class=StreamingResponse, responses={
    200: {"description": "The model's folder as a tar archive (its files at the root)",
          "content": TAR_ARCHIVE},
    202: {"description": "merged=true: a worker is merging the adapter; ask again after "
                         "Retry-After seconds", "model": ModelExport}})
def model_content(model_id: str, content: ModelContentDep,
                  merged: Annotated[bool, Query(description=(
                      "a lora_adapter merged into its base model's weights (made by a worker "
                      "on the first request)"))] = False) -> Response:
    """The model's folder, streamed as a tar archive that `from_pretrained` and vLLM load once
    unpacked: weights (safetensors), config, generation config and tokenizer; for a LoRA
    adapter, peft's adapter folder naming its base model by id, or with `merged=true` the
    adapter merged into its base model."""
    found = content.get(model_id, merged)
    if isinstance(found, PendingExport):
        body = ModelExport(model=found.model, status=found.status,  # type: ignore[arg-type]
                           retry_after=RETRY_AFTER_S)
        return JSONResponse(body.model_dump(), status_code=202,
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    return StreamingResponse(tar_stream(found.members), media_type="application/x-tar", headers={
        "Content-Disposition": f'attachment; filename="{found.filename}"',
        "Content-Length": str(found.size)})


@router.get("/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, session: SessionDep, project_id: ProjectId) -> ModelObject:
    row = registry.get_visible_model(session, project_id, model_id)
    return model_object(row, registry.root_model(session, model_id))


@router.delete("/{model_id:path}", response_model=Deleted)
def delete_model(model_id: str, session: SessionDep, project_id: ProjectId,
                 state: StateDep) -> Deleted:
    """Out of the registry, and its files off the artifact store (409 while a model built on
    it or an unfinished job still needs them)."""
    row = registry.delete_model(session, project_id, model_id)
    notify_deleted_model(session, model_id)  # every replica stops serving it as this commits
    session.commit()
    state.store.remove_tree(Path(row.path))
    return Deleted(id=model_id, object="model")
