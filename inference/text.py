"""Token ids to text as they stream: incremental detokenising and stop strings.

Every engine hands back token ids; this is the one place they become text, so both engines stop
at the same stop strings and stream the same deltas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"
"""What a decoder writes for a partial UTF-8 sequence: held back until the next token."""


@dataclass
class TextStream:
    """Decodes only a short window per token (the tokens since the last clean cut), so the cost
    per token stays constant however long the completion grows."""

    tokenizer: PreTrainedTokenizerBase
    stop: list[str]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    """Everything decoded so far (held-back text included)."""
    emitted: str = ""
    """Text already handed out."""
    stopped: bool = False
    _prefix: int = 0
    """token_ids[_prefix:_read] decode to the tail of `text` the next window starts from."""
    _read: int = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is safe to hand out (may be empty).

        Sets `stopped` when a stop string appears: the text ends just before it.
        """
        self.token_ids.append(token_id)
        self._decode_new()
        for stop in self.stop:
            at = self.text.find(stop, max(0, len(self.emitted) - len(stop) + 1))
            if at != -1:
                self.stopped = True
                return self._advance(self.text[:at])
        safe = len(self.text) - self._held_back(self.text)
        return self._advance(self.text[:safe])

    def finish(self) -> str:
        """The text still held back once the sequence ended without a stop string."""
        tail = self._decode(self.token_ids[self._prefix:])
        base = self._decode(self.token_ids[self._prefix:self._read])
        if tail.startswith(base) and len(tail) > len(base):
            self.text += tail[len(base):]  # a partial character completed by nothing: keep it
        return self._advance(self.text)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _decode_new(self) -> None:
        base = self._decode(self.token_ids[self._prefix:self._read])
        window = self._decode(self.token_ids[self._prefix:])
        if len(window) > len(base) and not window.endswith(REPLACEMENT):
            self.text += window[len(base):]
            self._prefix, self._read = self._read, len(self.token_ids)

    def _held_back(self, text: str) -> int:
        """Characters at the end that may begin a stop string."""
        held = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

    def _advance(self, text: str) -> str:
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta
