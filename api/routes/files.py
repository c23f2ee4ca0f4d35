"""/v1/files: JSONL datasets, validated line by line before anything is stored."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from api.deps import FilesDep, StateDep
from api.presenters import file_object
from api.protocol import Deleted, FileObject, ListObject
from services.datasets import PURPOSES
from services.web import ERROR_RESPONSES

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)


@router.post("", response_model=FileObject)
def upload_file(files: FilesDep, state: StateDep, file: UploadFile,
                purpose: Annotated[str, Form(json_schema_extra={"enum": list(PURPOSES)})],
                ) -> FileObject:
    # The body was cut at the limit as it arrived (services.web.BodyLimit); the file itself
    # is measured exactly here.
    row = files.create(file.file, file.filename or "upload.jsonl", purpose,
                       state.settings.max_upload_bytes)
    return file_object(row)


@router.get("", response_model=ListObject[FileObject])
def list_files(files: FilesDep, purpose: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 100,
               after: str | None = None) -> ListObject[FileObject]:
    rows, has_more = files.page(purpose, limit, after)
    return ListObject[FileObject](data=[file_object(r) for r in rows], has_more=has_more)


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, files: FilesDep) -> FileObject:
    return file_object(files.get(file_id))


@router.get("/{file_id}/content", response_class=StreamingResponse)
def file_content(file_id: str, files: FilesDep) -> StreamingResponse:
    # A download, never a page: a browser must not sniff user-supplied rows into HTML.
    name = quote(files.get(file_id).filename, safe="")
    return StreamingResponse(files.content(file_id), media_type="application/jsonl", headers={
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f"attachment; filename*=UTF-8''{name}"})


@router.delete("/{file_id}", response_model=Deleted)
def delete_file(file_id: str, files: FilesDep) -> Deleted:
    files.delete(file_id)
    return Deleted(id=file_id, object="file")
