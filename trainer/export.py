"""The worker's side of a merged download (`services.model_exports`): a LoRA adapter merged
into its base model's weights (peft's `merge_and_unload`), written as one ordinary Hugging Face
folder — safetensors, config, generation config, the adapter's tokenizer — beside the adapter.

Idempotent and safe to run twice at once: each run writes under a scratch name of its own and
renames it into place; the first rename wins and a later run finds the folder and stops.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from services.db.engine import session_scope
from services.model_exports import (
    ADAPTER_KIND,
    ExportStatus,
    locked_model,
    merged_folder,
    partial_folder,
    set_export_state,
)
from services.registry import resolve_base_path

log = logging.getLogger(__name__)


def write_merged(adapter: Path, base: Path, target: Path) -> bool:
    """Merge ``adapter`` into ``base`` and write the result at ``target``; False when another
    run wrote ``target`` first. The merge is done in float32 and saved in the base's dtype."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    saved_dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if isinstance(saved_dtype, torch.dtype):
        merged = merged.to(saved_dtype)
    partial = partial_folder(target, uuid.uuid4().hex[:8])
    try:
        merged.save_pretrained(str(partial))  # weights, config.json, generation_config.json
        AutoTokenizer.from_pretrained(adapter).save_pretrained(str(partial))
        try:
            os.rename(partial, target)
        except OSError:
            if target.is_dir():  # another run's rename came first: its folder is the same model
                return False
            raise
        return True
    finally:
        shutil.rmtree(partial, ignore_errors=True)


class MergedExport:
    """The `alignd.models.export_merged` task's body: state changes under the row's lock,
    the merge itself outside any transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def run(self, model_id: str) -> str:
        with session_scope(self.sessions) as session:
            row = locked_model(session, model_id)
            if row is None or row.kind != ADAPTER_KIND:
                log.warning("merged export of %s: not a LoRA adapter in the registry (any more)",
                            model_id)
                return "skipped"
            target = merged_folder(row)
            if target.is_dir():
                set_export_state(row, ExportStatus.SUCCEEDED)
                return ExportStatus.SUCCEEDED.value
            base_path, _ = resolve_base_path(session, model_id)
            adapter = Path(row.path)
            set_export_state(row, ExportStatus.RUNNING)
        log.info("merging adapter %s into %s", model_id, base_path)
        try:
            write_merged(adapter, Path(base_path), target)
        except Exception as exc:
            log.exception("merging adapter %s failed", model_id)
            self._record(model_id, ExportStatus.FAILED, f"{type(exc).__name__}: {exc}")
            return ExportStatus.FAILED.value
        self._record(model_id, ExportStatus.SUCCEEDED)
        return ExportStatus.SUCCEEDED.value

    def _record(self, model_id: str, status: ExportStatus, error: str | None = None) -> None:
        with session_scope(self.sessions) as session:
            row = locked_model(session, model_id)
            if row is not None:
                set_export_state(row, status, error)
