"""VAS does what it is for: a value model trained by the `value_model` method on the demo
task's prompts steers the frozen base towards completions its reward prefers, more so as beta
grows."""

from __future__ import annotations

import statistics
from pathlib import Path

import httpx
import pytest

from services.db.engine import session_factory, session_scope
from services.methods import ValueModelHyperparameters
from services.registry import register_model
from tests.inference.conftest import SERVICE_KEY, InferenceWorld
from trainer.context import TrainingContext
from trainer.demo_world.task import make_problems
from trainer.methods import METHODS

pytestmark = pytest.mark.slow

DIGITS_ONLY = {
    "type": "python", "name": "digits",
    "source": "def grade(sample, item):\n"
              "    text = sample['output_text']\n"
              "    return sum(c.isdigit() for c in text) / max(1, len(text))\n",
}
"""The share of the completion that is digits, as a bare answer is (the base model's echo of
the question is not): a random base writes about one digit in three."""
MAX_TOKENS = 12


def reward(text: str) -> float:
    """DIGITS_ONLY, read here without the service."""
    return sum(c.isdigit() for c in text) / max(1, len(text))


@pytest.fixture(scope="module")
def trained_value_model(inference_world: InferenceWorld, grader_reward_url: str,
                        database_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("vas-value")
    rows = [{"prompt": p.prompt, "answer": p.answer} for p in make_problems(32, seed=5)]
    hp = ValueModelHyperparameters(
        reward=DIGITS_ONLY, batch_size=32, learning_rate=1e-3, lr_scheduler="constant",
        n_epochs=12, max_seq_length=48, samples_per_prompt=4, max_new_tokens=MAX_TOKENS)
    ctx = TrainingContext(
        job_id="vas-demo", base_model_path=Path(inference_world.base_path), training_rows=rows,
        validation_rows=None, hyperparameters=hp, seed=0, output_dir=root / "model",
        checkpoint_root=root / "checkpoints", base_model=inference_world.base,
        reward_url=grader_reward_url, reward_key=SERVICE_KEY,
        project_id=inference_world.project)
    result = METHODS["value_model"](ctx)
    print(f"value model: {result.final_metrics}")
    model_id = f"vm:{inference_world.base}:digits"
    with session_scope(session_factory(database_url)) as session:
        register_model(session, model_id=model_id, project_id=inference_world.project,
                       kind="value_model", path=str(result.output_dir),
                       base_model=inference_world.base, job_id="vas-demo")
    return model_id


def mean_reward(url: str, world: InferenceWorld, value_model: str, beta: float) -> float:
    prompts = make_problems(24, seed=6)  # none of the training prompts
    rewards = []
    with httpx.Client(base_url=url, timeout=120,
                      headers={"Authorization": f"Bearer {world.key}"}) as http:
        for i, problem in enumerate(prompts):
            body = {"model": world.base, "prompt": problem.prompt, "max_tokens": MAX_TOKENS,
                    "temperature": 1.0, "top_k": 20, "seed": i,
                    "value_guidance": [{"model": value_model, "beta": beta}]}
            response = http.post("/v1/completions", json=body)
            response.raise_for_status()
            rewards.append(reward(response.json()["choices"][0]["text"]))
    return statistics.mean(rewards)


def test_a_larger_beta_raises_the_mean_reward(inference_url: str,
                                              inference_world: InferenceWorld,
                                              trained_value_model: str) -> None:
    means = {beta: mean_reward(inference_url, inference_world, trained_value_model, beta)
             for beta in (0.0, 10.0, 50.0)}
    print(f"mean reward by beta: {means}")
    # 24 completions per beta: a sampling noise of a few hundredths (seeds differ by engine),
    # so the assertions compare the far ends with a margin rather than every neighbour.
    assert means[50.0] >= means[0.0] + 0.1, means
    assert means[50.0] > means[10.0], means
