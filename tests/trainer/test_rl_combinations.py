"""Options that combine: the KL term on padded rows, reward normalisation with ReMax's greedy
baseline and NGRPO's virtual reward, the β·KL term's sign in the loss, and each algorithm's
advantages through the whole experience path (`ExperienceMaker`), on hand-built tensors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from trainer.algorithms.policy_gradient import (
    LOSS_AGGREGATIONS,
    LossScale,
    clipped_surrogate,
    kl_penalty,
)
from trainer.algorithms.registry import ALGORITHMS, AdvantageOptions
from trainer.online.batch import RolloutBatch
from trainer.online.experience import ExperienceMaker, Scored
from trainer.online.scoring import RewardNormalizer
from trainer.online.update import PolicyUpdate, UpdateSettings

VOCAB = 5


def test_a_padded_position_far_below_the_reference_leaves_the_gradient_finite() -> None:
    """Padding carries whatever log-probability the forward gave it, against a reference of
    0: at −100, k3's exp(100) overflows float32, and the masked sum's backward was 0·inf."""
    logprobs = torch.tensor([[-1.0, -100.0]], requires_grad=True)
    reference = torch.tensor([[-1.5, 0.0]])
    mask = torch.tensor([[1.0, 0.0]])
    for estimator in ("k1", "k2", "k3"):
        kl = kl_penalty(logprobs, reference, estimator, mask)  # type: ignore[arg-type]
        loss = LOSS_AGGREGATIONS["token_mean"](kl, mask, LossScale.of(mask, 2))
        (gradient,) = torch.autograd.grad(loss, logprobs)
        assert torch.isfinite(gradient).all(), (estimator, gradient)
        assert gradient[0, 1] == 0 and gradient[0, 0] != 0


def test_k3_is_bounded_where_the_policy_has_left_the_reference_far_behind() -> None:
    logprobs = torch.tensor([[-60.0, -2.0]], requires_grad=True)
    kl = kl_penalty(logprobs, torch.tensor([[0.0, -2.0]]), "k3")
    assert kl.tolist()[0] == [10.0, 0.0]
    kl.sum().backward()
    assert torch.isfinite(logprobs.grad).all()  # type: ignore[arg-type]


def fixed(scale: float) -> Any:
    """A "model" whose logits at every position are scale·[0, 1, …, VOCAB−1]."""
    def logits(sequences: torch.Tensor, attention_mask: torch.Tensor, t: int) -> torch.Tensor:
        return scale * torch.arange(VOCAB, dtype=torch.float32).expand(sequences.shape[0], t,
                                                                      VOCAB)
    return logits


def test_the_kl_term_in_the_loss_pulls_the_policy_towards_the_reference() -> None:
    """β·KL enters the loss with a plus sign: with no advantage to follow, one step makes the
    token the reference favours likelier than before, and β = 0 leaves the policy alone."""
    for beta, moves in ((1.0, True), (0.0, False)):
        scores = torch.zeros(VOCAB, requires_grad=True)
        optimizer = torch.optim.SGD([scores], lr=1.0)
        settings = UpdateSettings(
            policy_loss=clipped_surrogate, update_epochs=1, minibatch_size=1,
            micro_batch_size=1, clip_low=0.2, clip_high=0.2, kl_in_loss=True,
            kl_estimator="k3", entropy_coefficient=0.0, loss_aggregation="token_mean",
            max_new_tokens=2, max_grad_norm=100.0)
        update = PolicyUpdate(lambda seq, mask, t, s=scores: s.expand(seq.shape[0], t, VOCAB),
                              torch.nn.Linear(1, 1), optimizer,
                              LambdaLR(optimizer, lambda _: 1.0), settings)
        reference = torch.log_softmax(torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0]), -1)
        sequences = torch.tensor([[1, 4, 3]])
        zeros = torch.zeros(1, 2)
        batch = RolloutBatch(
            sequences=sequences, attention_mask=torch.ones_like(sequences),
            mask=torch.ones(1, 2), logprobs=torch.full((1, 2), -math.log(VOCAB)),
            ref_logprobs=reference[[4, 3]].unsqueeze(0), values=zeros,
            rewards=torch.zeros(1), token_rewards=zeros, group=torch.tensor([0]),
            advantages=zeros, returns=zeros, baseline_rewards=torch.zeros(1))
        update.run(batch, beta, torch.Generator().manual_seed(0))
        gained = torch.log_softmax(scores.detach(), -1)[3].item() + math.log(VOCAB)
        assert (gained > 1e-3) if moves else abs(gained) < 1e-6, (beta, gained)


def test_the_normaliser_moves_remaxs_baseline_with_the_rewards() -> None:
    rewards, baseline = torch.tensor([1.0, 3.0, 5.0, 7.0]), torch.tensor([4.0, 4.0, 4.0, 4.0])
    normalize = RewardNormalizer("batch")
    scaled, scaled_baseline = normalize.with_baseline(rewards, baseline)
    std = rewards.std().item()
    assert scaled.tolist() == pytest.approx([(r - 4.0) / std for r in rewards.tolist()])
    assert scaled_baseline.tolist() == pytest.approx([0.0] * 4, abs=1e-6)
    # every advantage keeps the sign of r − r(greedy)
    assert ((scaled - scaled_baseline).sign() == (rewards - baseline).sign()).all()
    clipped = RewardNormalizer("none", clip=2.0).with_baseline(rewards, baseline)
    assert clipped[0].tolist() == [1.0, 2.0, 2.0, 2.0] and clipped[1].tolist() == [2.0] * 4
    # NGRPO's r_max: never normalised (refused beside it), clipped all the same
    assert RewardNormalizer("none", clip=2.0).clipped(5.0) == 2.0
    assert RewardNormalizer("none").clipped(5.0) == 5.0


def test_the_running_normaliser_is_welfords_over_every_reward_seen() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=generator) * 3 + 1 for n in (1, 4, 7)]
    normalize = RewardNormalizer("running")
    for batch in batches:
        out = normalize(batch)
    seen = torch.cat(batches)
    assert normalize.count == len(seen)
    assert normalize.mean == pytest.approx(seen.mean().item(), rel=1e-6)
    assert math.sqrt(normalize.m2 / (normalize.count - 1)) == pytest.approx(seen.std().item(),
                                                                              rel=1e-6)
    expected = (batches[-1] - seen.mean()) / seen.std()
    assert out.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    restored = RewardNormalizer("running")
    restored.load_state_dict(normalize.state_dict())
    assert restored.state_dict() == normalize.state_dict()


def experience(algorithm: str, **options: Any) -> ExperienceMaker:
    return ExperienceMaker(policy=fixed(1.0), reference=None, critic=None,
                           algorithm=ALGORITHMS[algorithm], options=AdvantageOptions(**options),
                           kl_estimator="k3", kl_in_reward=False, whiten_advantages=False,
                           micro_batch_size=4, pad_id=0, device=torch.device("cpu"))


REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
"""Two prompts of three responses: one right of three, then two of three."""


@pytest.mark.parametrize("algorithm, options, expected", [
    ("grpo", {}, [2 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3),
                  -2 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)]),
    ("grpo", {"scale_rewards": False}, [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]),
    ("rloo", {}, [1.0, -0.5, -0.5, -1.0, 0.5, 0.5]),
    ("remax", {}, [0.5, -0.5, -0.5, 0.0, 1.0, 1.0]),
])
def test_each_algorithms_advantages_through_the_experience_path(
        algorithm: str, options: dict[str, Any], expected: list[float]) -> None:
    """Per-prompt baselines as each paper defines them (ReMax: the greedy rewards 0.5 and 0),
    broadcast onto every real token of each response; a GRPO computed as RLOO, or the other
    way round, fails here."""
    responses = [[1, 2], [3], [4, 4, 2], [2], [1], [3, 3]]
    scored = Scored([[1]] * 3 + [[2]] * 3, responses, torch.tensor(REWARDS),
                    torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0.5] * 3 + [0.0] * 3),
                    [[0.0] * len(r) for r in responses])
    batch = experience(algorithm, **options).make(scored, scored.rewards, beta=0.0)
    for row, response in enumerate(responses):
        assert batch.advantages[row, :len(response)].tolist() == pytest.approx(
            [expected[row]] * len(response), abs=1e-3), (algorithm, row)
        assert batch.advantages[row, len(response):].abs().sum() == 0


def one_step(cap: float | None, engine_gap: float) -> torch.Tensor:
    """The scores (a one-position "model") after one SGD step of the clipped surrogate on a
    rollout whose sampler gave every token ``engine_gap`` less log-probability than π_old."""
    scores = torch.zeros(VOCAB, requires_grad=True)
    optimizer = torch.optim.SGD([scores], lr=1.0)
    settings = UpdateSettings(
        policy_loss=clipped_surrogate, update_epochs=1, minibatch_size=2, micro_batch_size=2,
        clip_low=0.2, clip_high=0.2, kl_in_loss=False, kl_estimator="k3",
        entropy_coefficient=0.0, loss_aggregation="token_mean", max_new_tokens=2,
        max_grad_norm=100.0, on_policy=True, rollout_is_cap=cap)
    update = PolicyUpdate(lambda seq, mask, t: scores.expand(seq.shape[0], t, VOCAB),
                          torch.nn.Linear(1, 1), optimizer, LambdaLR(optimizer, lambda _: 1.0),
                          settings)
    sequences = torch.tensor([[1, 4, 3], [1, 2, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    zeros = torch.zeros(2, 2)
    old = torch.full((2, 2), -math.log(VOCAB))
    batch = RolloutBatch(
        sequences=sequences, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), mask=mask,
        logprobs=zeros.clone(), ref_logprobs=zeros, values=zeros, rewards=torch.zeros(2),
        token_rewards=zeros, group=torch.tensor([0, 0]),
        advantages=torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), returns=zeros,
        baseline_rewards=torch.zeros(2), engine_logprobs=(old - engine_gap) * mask)
    metrics = update.run(batch, 0.0, torch.Generator().manual_seed(0))
    if cap is not None:
        expected = min(math.exp(engine_gap), cap)
        assert metrics["rollout_is_weight"] == pytest.approx(expected, rel=1e-5)
    return scores.detach()


def test_truncated_importance_sampling_weighs_the_loss_by_the_capped_engine_ratio() -> None:
    plain = one_step(None, 0.0)
    assert plain.abs().sum() > 0
    # the sampler agreeing with π_old changes nothing
    assert torch.allclose(one_step(2.0, 0.0), plain, atol=1e-7)
    # π_old/p_sampler = 1.5 under the cap: the gradient (from zero) is 1.5 times as large
    assert torch.allclose(one_step(2.0, math.log(1.5)), 1.5 * plain, atol=1e-6)
    # 5 is over the cap of 2: truncated at 2
    assert torch.allclose(one_step(2.0, math.log(5.0)), 2.0 * plain, atol=1e-6)


def test_superhfs_supervised_loss_is_the_nll_of_the_kept_response() -> None:
    """Per token −Â·log π_θ with Â = 1 on the kept (best) response: its gradient is −1 on
    every real token, nothing clips, and the ratio to the sampler is reported."""
    from trainer.algorithms.superhf import supervised_loss

    logprobs = torch.tensor([[-0.5, -2.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-0.5, -1.0, -1.0]])
    terms = supervised_loss(logprobs, old, torch.ones(1, 3), 0.2, 0.2)
    assert terms.loss.tolist()[0] == [0.5, 2.0, 1.0]
    assert not terms.clipped.any()
    assert terms.ratio.tolist()[0] == pytest.approx([1.0, math.exp(-1.0), 1.0])
    terms.loss.sum().backward()
    assert logprobs.grad.tolist()[0] == [-1.0, -1.0, -1.0]  # type: ignore[union-attr]


def test_rpo_adds_the_chosen_responses_per_token_nll_times_its_coefficient() -> None:
    """RPO's term: sft_coefficient × (−log π(y_w|x) / |y_w|), per pair, beside the DPO loss."""
    from trainer.algorithms.preference import PREFERENCE_LOSSES, PairLogRatios, PreferenceOptions
    from trainer.methods.dpo import DpoTrainer, PairOutputs

    class Counts:  # the packed batch's one method the term reads
        def response_token_counts(self) -> torch.Tensor:
            return torch.tensor([4.0, 2.0, 3.0, 5.0])  # chosen first, then rejected

    logps = torch.tensor([-8.0, -3.0, -9.0, -10.0])  # Σ log π per response, chosen first
    nll = DpoTrainer._chosen_nll(Counts(), logps)  # type: ignore[arg-type]
    assert nll.tolist() == [2.0, 1.5]
    pairs = PairLogRatios(chosen=torch.tensor([0.3, -0.1]), rejected=torch.tensor([0.1, 0.2]))
    trainer = object.__new__(DpoTrainer)  # _loss reads hp and options only
    trainer.options = PreferenceOptions(beta=0.1)
    for coefficient in (0.0, 0.5):
        trainer.hp = type("Hp", (), {"loss": "sigmoid", "sft_coefficient": coefficient})()
        loss = trainer._loss(PairOutputs(logps[:2], logps[2:], pairs, nll))
        expected = PREFERENCE_LOSSES["sigmoid"](pairs, trainer.options) + coefficient * nll
        assert loss.tolist() == pytest.approx(expected.tolist())
