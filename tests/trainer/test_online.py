"""The online-RL loop on a tiny real model, rewarded by a real reward service on loopback:
learning, what every step reports, LoRA with a KL term, resuming, long prompts, and a reward
service that restarts mid-job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from services.methods import Method
from tests.trainer.test_supervised import Recorder, context
from trainer.context import JobStopped, RolloutEngine, TrainingResult
from trainer.methods import METHODS
from trainer.online.scoring import RewardScorer, score_items

DIGIT_SHARE = {
    "type": "python", "name": "digits",
    "source": "def grade(sample, item):\n"
              "    text = sample['output_text']\n"
              "    return sum(c.isdigit() for c in text) / max(len(text), 1)\n",
}
"""The share of digits in a response: about 0.1 for the random tiny model, easy to raise."""

STEP_METRICS = {"reward_mean", "reward_std", "entropy", "clip_fraction", "approx_kl",
                "response_length", "advantage_mean", "advantage_std", "filtered_fraction",
                "samples_per_second", "tokens_per_second", "rollout_seconds", "score_seconds",
                "update_seconds", "score_latency_seconds", "policy_loss", "grad_norm",
                "learning_rate", "uniform_group_fraction", "zero_reward_group_fraction"}


def prompt_rows(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"{i}+{i % 7}="} for i in range(n)]


def method(algorithm: str = "grpo", **hyperparameters: Any) -> Any:
    settings = {"prompts_per_step": 8, "group_size": 4, "max_new_tokens": 8,
                "learning_rate": 3e-3, "max_steps": 10, "checkpoint_every": 100,
                **hyperparameters}
    return Method.model_validate({"type": "reinforcement", "reinforcement": {
        "algorithm": algorithm, "reward": DIGIT_SHARE, "hyperparameters": settings}})


def train(workdir: Path, base: Path, reward_url: str, recorder: Recorder | None = None,
          rows: list[dict[str, Any]] | None = None, algorithm: str = "grpo",
          rollout_engine: RolloutEngine | None = None, models: dict[str, Path] | None = None,
          **hyperparameters: Any) -> tuple[TrainingResult, Recorder]:
    """``models``: the registry this run sees (id → folder)."""
    recorder = recorder or Recorder()
    chosen = method(algorithm, **hyperparameters)
    ctx = context(workdir, base, chosen.hyperparameters, rows or prompt_rows(40), recorder,
                  reward=chosen.section.reward, reward_url=reward_url,
                  rollout_engine=rollout_engine or RolloutEngine(),
                  resolve_model=(models or {}).__getitem__)
    return METHODS["reinforcement"](ctx), recorder


def rewards(recorder: Recorder) -> list[float]:
    return [recorder.metrics[step]["reward_mean"] for step in sorted(recorder.metrics)]


@pytest.fixture(scope="module")
def control(base_model_path: Path, tmp_path_factory: pytest.TempPathFactory,
            reward_service: str) -> list[float]:
    """The reward curve of the same job, seeds and sampling at a learning rate of 1e-12: what
    the rewards do when nothing is learnt (the steps' prompts and draws vary on their own)."""
    _, recorder = train(tmp_path_factory.mktemp("control"), base_model_path, reward_service,
                        learning_rate=1e-12)
    return rewards(recorder)


def rise(curve: list[float], control: list[float], last: int = 3) -> float:
    """How far the last steps' mean reward ends above the control's over the same steps."""
    return sum(curve[-last:]) / last - sum(control[-last:]) / last


def test_grpo_raises_the_reward_from_live_weights(base_model_path: Path, tmp_path: Path,
                                                  reward_service: str,
                                                  control: list[float]) -> None:
    result, recorder = train(tmp_path, base_model_path, reward_service)
    curve = rewards(recorder)
    assert sorted(recorder.metrics) == list(range(1, 11))
    assert sum(curve[-2:]) / 2 > sum(curve[:2]) / 2 + 0.2, curve
    assert rise(curve, control, last=2) > 0.2, (curve, control)
    first = recorder.metrics[1]
    assert STEP_METRICS <= set(first), STEP_METRICS - set(first)
    # One epoch, one minibatch: every update is on-policy, so the ratio is 1 and nothing clips.
    assert first["ratio"] == pytest.approx(1.0, abs=1e-5) and first["clip_fraction"] == 0.0
    # The engine sampled from the very weights the trainer scores.
    assert all(m["engine_logprob_gap"] < 1e-4 for m in recorder.metrics.values())
    assert result.kind == "fine_tuned" and result.trained_tokens > 0
    assert result.metadata == {"algorithm": "grpo", "reward": DIGIT_SHARE}
    trained = load_file(result.output_dir / "model.safetensors")
    base = load_file(base_model_path / "model.safetensors")
    assert any(not torch.equal(trained[name], base[name]) for name in base)
    AutoModelForCausalLM.from_pretrained(result.output_dir)  # loads as a plain causal LM


def test_several_epochs_and_minibatches_clip_off_policy_tokens(
        base_model_path: Path, tmp_path: Path, reward_service: str) -> None:
    _, recorder = train(tmp_path, base_model_path, reward_service, max_steps=2, update_epochs=3,
                        minibatch_size=8, learning_rate=1e-2, clip_range_low=0.05,
                        clip_range_high=0.05)
    assert any(m["clip_fraction"] > 0 for m in recorder.metrics.values())
    assert any(m["approx_kl"] > 0 for m in recorder.metrics.values())


def test_a_lora_policy_keeps_the_base_as_its_reference(base_model_path: Path, tmp_path: Path,
                                                       reward_service: str) -> None:
    result, recorder = train(tmp_path, base_model_path, reward_service, max_steps=3,
                             lora={"r": 4}, beta=0.1, learning_rate=1e-2)
    assert result.kind == "lora_adapter"
    assert (result.output_dir / "adapter_config.json").is_file()
    # The adapter starts as the identity: at step 1 the policy is its reference.
    assert recorder.metrics[1]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert recorder.metrics[3]["kl"] > 1e-4
    assert recorder.metrics[3]["kl_coefficient"] == 0.1


@pytest.mark.parametrize("algorithm, extra", [
    ("rloo", {}), ("remax", {}), ("ngrpo", {}), ("ppo", {}), ("superhf", {}),
    ("grpo", {"policy_filter": {"strategy": "best_random", "keep": 2}}),
])
def test_each_algorithm_raises_the_reward(base_model_path: Path, tmp_path: Path,
                                          reward_service: str, algorithm: str, extra: dict,
                                          control: list[float]) -> None:
    _, recorder = train(tmp_path, base_model_path, reward_service, algorithm=algorithm, **extra)
    curve = rewards(recorder)
    assert sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.05, (algorithm, curve)
    assert rise(curve, control) > 0.05, (algorithm, curve, control)
    if extra:
        assert recorder.metrics[1]["filtered_fraction"] == 0.5
    if algorithm == "superhf":  # the best of each prompt's 4, trained on by NLL
        assert recorder.metrics[1]["filtered_fraction"] == 0.75
        assert all(m["clip_fraction"] == 0 for m in recorder.metrics.values())
    if algorithm == "ppo":  # a critic learns beside the policy; the KL is in the reward
        assert all(m["value_loss"] > 0 for m in recorder.metrics.values())
        assert recorder.metrics[10]["kl"] > 0 and recorder.metrics[10]["kl_coefficient"] == 0.05


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_a_stopped_job_resumes_to_the_weights_of_an_uninterrupted_one(
        base_model_path: Path, tmp_path: Path, reward_service: str, algorithm: str) -> None:
    settings: dict[str, Any] = {"max_steps": 4, "checkpoint_every": 2, "update_epochs": 2,
                                "minibatch_size": 16, "reward_normalization": "running"}
    uninterrupted, whole = train(tmp_path / "a", base_model_path, reward_service,
                                 algorithm=algorithm, **settings)
    with pytest.raises(JobStopped):
        train(tmp_path / "b", base_model_path, reward_service, Recorder(stop_after_step=3),
              algorithm=algorithm, **settings)
    if algorithm == "ppo":  # the critic, its optimizer and the KL controller are kept too
        kept = tmp_path / "b" / "checkpoints" / "step-2"
        assert {"critic", "critic_optimizer.pt", "loop_state.json"} <= \
            {path.name for path in kept.iterdir()}
    resumed_recorder = Recorder()
    chosen = method(algorithm, **settings)
    ctx = context(tmp_path / "b", base_model_path, chosen.hyperparameters, prompt_rows(40),
                  resumed_recorder, reward=DIGIT_SHARE, reward_url=reward_service,
                  resume_from=tmp_path / "b" / "checkpoints" / "step-2")
    resumed = METHODS["reinforcement"](ctx)
    assert sorted(resumed_recorder.metrics) == [3, 4]
    for step in (3, 4):
        assert resumed_recorder.metrics[step]["reward_mean"] == \
            pytest.approx(whole.metrics[step]["reward_mean"])
    expected = load_file(uninterrupted.output_dir / "model.safetensors")
    actual = load_file(resumed.output_dir / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.allclose(actual[name], tensor, rtol=1e-4, atol=1e-5), name


def test_prompts_longer_than_the_context_are_refused_by_row(
        base_model_path: Path, tmp_path: Path, reward_service: str) -> None:
    rows = [{"prompt": "1+1="}, {"prompt": "9" * 40}]
    with pytest.raises(ValueError, match=r"training prompt row 1 is \d+ tokens long.* leaves 8"):
        train(tmp_path, base_model_path, reward_service, rows=rows, max_seq_length=16)


def test_a_reward_service_that_restarts_is_retried_until_it_answers(database_url: str) -> None:
    """Nothing listens on the port for the first second and a half; scoring waits for it."""
    from tests.trainer.conftest import LateRewardService

    late = LateRewardService(database_url).start_later()
    item = {"prompt": "1+1=", "response": "2", "item": {}}
    scores = score_items(late.url, [item], DIGIT_SHARE, retry_seconds=30)
    assert late.started.is_set() and scores == [1.0]


def test_scores_sent_while_the_service_is_down_arrive_once_it_answers(
        database_url: str) -> None:
    """`RewardScorer.submit` returns at once (the step works on while the service scores);
    the result waits for the service, trying again as `score` does."""
    from tests.trainer.conftest import LateRewardService

    late = LateRewardService(database_url).start_later()
    scorer = RewardScorer(late.url, DIGIT_SHARE, retry_seconds=30)
    try:
        pending = scorer.submit([{"prompt": "1+1=", "response": "2", "item": {}},
                                 {"prompt": "1+1=", "response": "two", "item": {}}])
        assert not late.started.is_set()  # sent, not waited for: nothing serves it yet
        assert pending.result() == [1.0, 0.0]
        assert late.started.is_set() and pending.latency > 0
    finally:
        scorer.close()


def test_a_ppo_critic_starts_from_a_named_reward_model(base_model_path: Path,
                                                      tmp_path: Path) -> None:
    """Its trunk and classifier head: V at the last token is the reward model's score."""
    from transformers import AutoModelForSequenceClassification

    from trainer.online.critic import Critic, critic_source
    from trainer.online.experience import pack

    reward_model = AutoModelForSequenceClassification.from_pretrained(
        base_model_path, num_labels=1, pad_token_id=0)
    torch.nn.init.normal_(reward_model.score.weight, std=0.5)
    reward_model.save_pretrained(tmp_path / "rm")
    source, fresh_head = critic_source(base_model_path, tmp_path / "rm")
    assert (source, fresh_head) == (tmp_path / "rm", False)
    hp = method("ppo").hyperparameters
    critic = Critic.load(source, fresh_head, 0, torch.device("cpu"), hp, 10, None)
    sequences, attention_mask, mask = pack([[1, 5, 6], [1, 7]], [[8, 9, 2], [10]], 0,
                                           torch.device("cpu"))
    with torch.no_grad():
        values = critic.values(sequences, attention_mask, mask.shape[1])  # (2, T)
        scores = reward_model.eval()(input_ids=sequences[:1], attention_mask=attention_mask[:1]
                                     ).logits[0, 0]
    # V(s_T-1) of row 0 reads the state before its last token: the reward model on all but it
    with torch.no_grad():
        before_last = reward_model(input_ids=sequences[:1, :-1],
                                   attention_mask=attention_mask[:1, :-1]).logits[0, 0]
    assert values[0, 2].item() == pytest.approx(before_last.item(), abs=1e-4)
    assert scores.item() != pytest.approx(0.0)
    fresh = Critic.load(base_model_path, True, 0, torch.device("cpu"), hp, 10, None)
    with torch.no_grad():
        assert torch.count_nonzero(fresh.values(sequences, attention_mask, mask.shape[1])) == 0


def test_rto_rewards_each_token_with_a_dpo_model_s_log_ratio(
        base_model_path: Path, tmp_path: Path, reward_service: str) -> None:
    """A DPO model trained to prefer digits steers RTO's dense rewards; its reward rises, and
    the token rewards are β₁·(log π_dpo − log π_ref) − β₂·KL + β₃·R at the last token."""
    from tests.trainer.test_dpo import train as train_dpo

    dpo, _ = train_dpo(tmp_path / "dpo", base_model_path, n_epochs=2)
    _, recorder = train(tmp_path / "rto", base_model_path, reward_service, algorithm="rto",
                        models={"ft:dpo": dpo.output_dir}, dpo_model="ft:dpo",
                        beta_dpo=0.05, reward_coefficient=2.0)
    curve = rewards(recorder)
    assert sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.05, curve
    assert all(m["value_loss"] > 0 for m in recorder.metrics.values())


def test_rto_token_rewards_follow_the_paper() -> None:
    from trainer.algorithms.registry import ALGORITHMS, AdvantageOptions
    from trainer.online.experience import ExperienceMaker, Scored

    vocab = 5

    def fixed(scale: float):  # type: ignore[no-untyped-def]
        def logits(sequences: torch.Tensor, attention_mask: torch.Tensor, t: int) -> torch.Tensor:
            return scale * torch.arange(vocab, dtype=torch.float32).expand(
                sequences.shape[0], t, vocab)
        return logits

    maker = ExperienceMaker(policy=fixed(1.0), reference=fixed(0.0), critic=None,
                            algorithm=ALGORITHMS["rto"], options=AdvantageOptions(),
                            kl_estimator="k1", kl_in_reward=True, whiten_advantages=False,
                            micro_batch_size=4, pad_id=0, device=torch.device("cpu"),
                            dense=fixed(2.0), dense_coefficient=0.05, reward_scale=2.0)
    scored = Scored([[1, 2], [3]], [[4, 0, 1], [2]], torch.tensor([1.0, -1.0]),
                    torch.tensor([0, 1]), torch.zeros(2), [[0.0] * 3, [0.0]])
    batch = maker.make(scored, scored.rewards, beta=0.01)
    logp = {s: torch.log_softmax(s * torch.arange(vocab, dtype=torch.float32), -1)
            for s in (0.0, 1.0, 2.0)}
    for row, response in enumerate(scored.responses):
        for t, token in enumerate(response):
            expected = (0.05 * (logp[2.0][token] - logp[0.0][token])
                        - 0.01 * (logp[1.0][token] - logp[0.0][token]))
            if t == len(response) - 1:
                expected += 2.0 * float(scored.rewards[row])
            assert batch.token_rewards[row, t].item() == pytest.approx(float(expected), abs=1e-5)
    assert batch.token_rewards[1, 1:].abs().sum() == 0


def test_group_fractions_count_prompts_not_responses() -> None:
    from trainer.online.loop import uniform_group_fraction, zero_reward_group_fraction

    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    group = torch.tensor([0, 0, 1, 1, 2, 2])  # all wrong, mixed, all right
    assert zero_reward_group_fraction(rewards, group) == pytest.approx(1 / 3)
    assert uniform_group_fraction(rewards, group) == pytest.approx(2 / 3)
