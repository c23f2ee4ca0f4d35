"""Real-style checkpoints, built offline (DESIGN §5): the families people bring — Qwen2,
Llama 3, Mistral, Gemma, GPT-2 — as tiny models with byte-level BPE tokenizers, their chat
templates and stop tokens, saved as a user's folder would be, pretrained briefly on the demo
task. `build_family_world` caches one per family."""

from trainer.real_world.build import build_family_world, default_real_root
from trainer.real_world.families import CHAT_FAMILIES, FAMILIES, Family

__all__ = ["CHAT_FAMILIES", "FAMILIES", "Family", "build_family_world", "default_real_root"]
