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
    tokenizer: PreTrainedTokenizerBase
    stop: list[str]
    token_ids: list[int] = field(default_factory=list)
    emitted: str = ""
    """Text already handed out."""
    stopped: bool = False

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is safe to hand out (may be empty).

        Sets `stopped` when a stop string appears: the text ends just before it.
        """
        self.token_ids.append(token_id)
        text = str(self.tokenizer.decode(self.token_ids, skip_special_tokens=True))
        for stop in self.stop:
            at = text.find(stop, max(0, len(self.emitted) - len(stop) + 1))
            if at != -1:
                self.stopped = True
                return self._advance(text[:at])
        safe = len(text) - self._held_back(text)
        return self._advance(text[:safe])

    def finish(self) -> str:
        """The text still held back once the sequence ended without a stop string."""
        text = str(self.tokenizer.decode(self.token_ids, skip_special_tokens=True))
        return self._advance(text)

    def _held_back(self, text: str) -> int:
        """Characters at the end that may begin a stop string or are a partial character."""
        held = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        if text.endswith(REPLACEMENT):
            held = max(held, 1)
        return held

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):  # the decoder revised earlier text: hand out none
            return ""
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta


def token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """A token's own text for logprobs (special tokens by name)."""
    return str(tokenizer.decode([token_id]))
