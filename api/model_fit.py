"""Whether a job's model can take the job, read from its checkpoint's files when the job is
created: a base model's checkpoint must still load; messages in the files need a tokenizer
with a chat template; the sequence lengths asked for must fit the model's context."""

from __future__ import annotations

from pathlib import Path

from services.checkpoints import Checkpoint, inspect_checkpoint
from services.datasets import CHAT_SHAPES
from services.db.models import RegisteredModel
from services.errors import InvalidRequest
from services.methods import MethodBase
from services.registry import BASE

FileShapes = dict[str, tuple[str, list[str]]]
"""param (training_file, validation_file) → (file id, the row shapes it holds)."""


def check_model_fits(model: RegisteredModel, method: MethodBase, files: FileShapes) -> None:
    """InvalidRequest naming the model and what does not fit. A base model's checkpoint is
    checked whole; a model a job produced is read for what its folder says (its tokenizer and
    config), as its job already loaded it."""
    checkpoint = inspect_checkpoint(Path(model.path))
    if model.kind == BASE and checkpoint.problems:
        raise InvalidRequest(f"base model {model.id!r} can no longer be loaded from "
                             f"{model.path}: {'; '.join(checkpoint.problems)}", param="model",
                             code="invalid_checkpoint")
    if checkpoint.chat_template is False:
        _refuse_messages(model.id, files)
    if checkpoint.context_length is not None:
        _refuse_longer_than(model.id, checkpoint, method)


def _refuse_messages(model_id: str, files: FileShapes) -> None:
    for param, (file_id, shapes) in files.items():
        chat = [shape for shape in shapes if shape in CHAT_SHAPES]
        if chat:
            raise InvalidRequest(
                f"model {model_id!r} has no chat template (its tokenizer defines none), so "
                f"it cannot train on {param} {file_id}, whose rows are messages "
                f"({', '.join(chat)}); give rows of text (prompt and completion, prompt and "
                "chosen/rejected, or prompt) or choose a model with a chat template",
                param=param, code="no_chat_template")


def _refuse_longer_than(model_id: str, checkpoint: Checkpoint, method: MethodBase) -> None:
    """max_seq_length when the request sets it (its default, 512, is longer than some models'
    context and stays the trainer's to cut rows to), and room for a prompt beside
    max_new_tokens."""
    context = checkpoint.context_length
    assert context is not None
    hyperparameters = method.hyperparameters
    path = f"method.{method.type}.hyperparameters"
    length = getattr(hyperparameters, "max_seq_length", None)
    if "max_seq_length" in hyperparameters.model_fields_set and isinstance(length, int) \
            and length > context:
        raise InvalidRequest(
            f"max_seq_length {length} is longer than model {model_id!r}'s context of "
            f"{context} tokens; use at most {context}", param=f"{path}.max_seq_length",
            code="context_length_exceeded")
    new_tokens = getattr(hyperparameters, "max_new_tokens", None)
    if isinstance(new_tokens, int) and new_tokens >= context:
        raise InvalidRequest(
            f"max_new_tokens {new_tokens} leaves no room for a prompt in model {model_id!r}'s "
            f"context of {context} tokens; use less than {context}",
            param=f"{path}.max_new_tokens", code="context_length_exceeded")
