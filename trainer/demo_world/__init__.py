"""The demo world: a tokenizer, a tiny pretrained Llama and datasets, built locally from code.

No model hub is reachable, so the project makes its own small world (DESIGN §5): an arithmetic
task with a gold grader (`task`, pure Python), a character-level tokenizer, a tiny
`LlamaForCausalLM` pretrained for a couple of CPU minutes so that it knows the arithmetic but
mostly echoes the question instead of answering, and the JSONL files every training method
needs. `build_demo_world` caches it; `exact_match_accuracy` measures a model against it.
"""

from trainer.demo_world.build import DemoWorld, build_demo_world, default_demo_root
from trainer.demo_world.evaluate import exact_match_accuracy
from trainer.demo_world.model import TINY_LLAMA, build_model, save_random_base_model
from trainer.demo_world.task import (
    Problem,
    extract_answer,
    gold_grade,
    make_problems,
    wrong_answer,
)
from trainer.demo_world.tokenizer import build_tokenizer

__all__ = [
    "TINY_LLAMA",
    "DemoWorld",
    "Problem",
    "build_demo_world",
    "build_model",
    "build_tokenizer",
    "default_demo_root",
    "exact_match_accuracy",
    "extract_answer",
    "gold_grade",
    "make_problems",
    "save_random_base_model",
    "wrong_answer",
]
