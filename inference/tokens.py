"""Each token's own text and raw bytes, as log-probabilities report them.

A token can hold part of a character. A byte-level BPE token such as ``æ`` (Qwen2, Llama 3,
GPT-2) stands for the byte 0xE6, and a byte-fallback token ``<0xE6>`` (Mistral, Gemma) for the
same byte; decoded alone, either is U+FFFD. OpenAI's ``bytes`` field exists for exactly this:
a token's raw bytes, so that a client joining them gets the text's UTF-8. Here they are read
off the token itself, the way the tokenizer's decoder reads it: byte-level characters mapped
back to their bytes, ``<0xNN>`` pieces to their byte, other pieces through the decoder's
``Replace`` steps (``▁`` to a space). A token's text is its bytes decoded (U+FFFD where they
are part of a character), so a sentencepiece token keeps its leading space, which decoding it
alone strips. Special and added tokens are their content. Tokenizers of another kind (the demo
world's character-level one) give their own decoding of the token.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_OF_CHARACTER = {character: byte for byte, character in bytes_to_unicode().items()}
"""A byte-level BPE vocabulary's character → the byte it stands for (``Ā`` → NUL)."""

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

PieceReader = Callable[[str], bytes]
"""A vocabulary entry → the raw bytes it stands for."""


class TokenPieces:
    """Token id → (text, raw bytes), for one tokenizer, remembered per id once asked for."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.size = len(tokenizer)
        """Ids the tokenizer knows: a model's vocabulary may be padded past it."""
        self._added = {index: token.content
                       for index, token in tokenizer.added_tokens_decoder.items()}
        self._read = _piece_reader(tokenizer)
        self._known: dict[int, tuple[str, bytes]] = {}

    def text(self, token_id: int) -> str:
        return self._piece(token_id)[0]

    def raw(self, token_id: int) -> bytes:
        """The token's raw bytes."""
        return self._piece(token_id)[1]

    def knows(self, token_id: int) -> bool:
        return 0 <= token_id < self.size

    def _piece(self, token_id: int) -> tuple[str, bytes]:
        known = self._known.get(token_id)
        if known is None:
            known = self._known[token_id] = self._look_up(token_id)
        return known

    def _look_up(self, token_id: int) -> tuple[str, bytes]:
        if token_id in self._added:
            text = self._added[token_id]
            return text, text.encode()
        piece = self.tokenizer.convert_ids_to_tokens(token_id) if self.knows(token_id) else None
        if not isinstance(piece, str):  # an id past the tokenizer's (a padded vocabulary's)
            return "", b""
        if self._read is None:
            text = str(self.tokenizer.decode([token_id]))
            return text, text.encode()
        raw = self._read(piece)
        return raw.decode("utf-8", errors="replace"), raw


_PIECES: weakref.WeakKeyDictionary[Any, TokenPieces] = weakref.WeakKeyDictionary()
_PIECES_LOCK = threading.Lock()


def token_pieces(tokenizer: PreTrainedTokenizerBase) -> TokenPieces:
    """The `TokenPieces` of ``tokenizer``, one per tokenizer object (the catalog keeps one per
    model folder), so each token is looked up once per process."""
    with _PIECES_LOCK:
        pieces = _PIECES.get(tokenizer)
        if pieces is None:
            pieces = _PIECES[tokenizer] = TokenPieces(tokenizer)
        return pieces


def _piece_reader(tokenizer: PreTrainedTokenizerBase) -> PieceReader | None:
    """How the tokenizer's decoder turns a vocabulary entry into bytes, or None when it is
    neither byte-level nor byte fallback (a slow tokenizer, a character vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return None
    spec = json.loads(decoder.__getstate__())
    steps = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = {step.get("type") for step in steps}
    if "ByteLevel" in kinds:
        return _byte_level
    if "ByteFallback" in kinds:
        replacements = [(step["pattern"]["String"], step["content"]) for step in steps
                        if step.get("type") == "Replace" and "String" in step.get("pattern", {})]
        return lambda piece: _byte_fallback(piece, replacements)
    return None


def _byte_level(piece: str) -> bytes:
    return bytes(BYTE_OF_CHARACTER[c] for c in piece) if all(
        c in BYTE_OF_CHARACTER for c in piece) else piece.encode()


def _byte_fallback(piece: str, replacements: list[tuple[str, str]]) -> bytes:
    byte = _BYTE_PIECE.fullmatch(piece)
    if byte is not None:
        return bytes([int(byte.group(1), 16)])
    for pattern, content in replacements:
        piece = piece.replace(pattern, content)
    return piece.encode()
