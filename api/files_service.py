"""Uploaded datasets: validated completely, then stored content-addressed with their metadata."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from sqlalchemy import literal, select, tuple_
from sqlalchemy.orm import Session

from services.artifacts import LocalArtifactStore
from services.datasets import check_purpose, validate_lines
from services.db.models import File, Job
from services.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from services.ids import new_id
from services.job_states import TERMINAL


class FileService:
    def __init__(self, session: Session, store: LocalArtifactStore, project_id: str):
        self.session, self.store, self.project_id = session, store, project_id

    def create(self, stream: BinaryIO, filename: str, purpose: str, max_bytes: int) -> File:
        check_purpose(purpose)
        if not filename.endswith((".jsonl", ".json", ".txt")) and "." in filename:
            raise InvalidRequest(f"file must be JSONL (.jsonl), got {filename!r}", param="file")
        size = _measure(stream)
        if size > max_bytes:
            raise PayloadTooLarge(f"file is {size} bytes; the limit is {max_bytes}", param="file")
        rows = validate_lines(stream, purpose)
        stream.seek(0)
        digest, size = self.store.put_stream(stream)
        row = File(id=new_id("file"), project_id=self.project_id, filename=filename,
                   purpose=purpose, bytes=size, sha256=digest, line_count=rows.count,
                   shapes=list(rows.shapes))
        self.session.add(row)
        self.session.commit()
        return row

    def get(self, file_id: str, param: str = "file_id") -> File:
        row = self.session.get(File, file_id)
        if row is None or row.project_id != self.project_id:
            raise NotFound(f"file {file_id!r} does not exist", param=param, code="file_not_found")
        return row

    def shapes(self, row: File, param: str) -> list[str]:
        """The row shapes the file holds; for a file uploaded before they were recorded,
        detected from its content now (and kept with the caller's commit)."""
        if row.shapes is None:
            try:
                found = validate_lines(self.store.iter_lines(row.sha256), row.purpose)
            except InvalidRequest as exc:
                raise InvalidRequest(f"{param} {row.id} no longer validates: {exc.message}",
                                     param=param, code=exc.code) from exc
            row.shapes = list(found.shapes)
        return list(row.shapes)

    def page(self, purpose: str | None, limit: int, after: str | None) -> tuple[list[File], bool]:
        query = select(File).where(File.project_id == self.project_id)
        if purpose:
            query = query.where(File.purpose == purpose)
        if after:
            cursor = self.get(after, param="after")
            query = query.where(tuple_(File.created_at, File.id)
                                 < tuple_(literal(cursor.created_at), literal(cursor.id)))
        rows = list(self.session.scalars(
            query.order_by(File.created_at.desc(), File.id.desc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def content(self, file_id: str) -> Iterator[bytes]:
        return self.store.iter_lines(self.get(file_id).sha256)

    def delete(self, file_id: str) -> None:
        row = self.get(file_id)
        in_use = self.session.scalar(
            select(Job.id).where(
                (Job.training_file == file_id) | (Job.validation_file == file_id),
                Job.status.not_in([s.value for s in TERMINAL]),
            ).limit(1)
        )
        if in_use:
            raise Conflict(f"file {file_id} is used by job {in_use}, which has not finished",
                           param="file_id")
        digest = row.sha256
        self.session.delete(row)
        self.session.commit()
        still_used = self.session.scalar(select(File.id).where(File.sha256 == digest).limit(1))
        if still_used is None:
            self.store.delete(digest)


def _measure(stream: BinaryIO) -> int:
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    return size
