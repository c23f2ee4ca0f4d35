"""`dpo` jobs: the DPO family on preference pairs (`trainer.algorithms.preference`), resumable.

The policy is the base model (full weights or a LoRA adapter). The reference's response
log-probabilities are computed once, before the first step, and kept in the job's checkpoint
folder (`reference_logps.pt`), so training runs one forward pass per pair and no reference
model stays in memory; TDPO, whose sequential KL needs the reference's whole next-token
distribution at every position, runs the reference beside the policy instead. With LoRA and
no `reference` named, the reference is the same weights with the adapter switched off.

A step reads the next `batch_size * gradient_accumulation_steps` pairs of the row stream, in
micro-batches of `batch_size`; its loss is the mean over its pairs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling.packing import PackedBatch, pack, supports_packing
from services.methods import DpoHyperparameters
from trainer.algorithms.preference import (
    PREFERENCE_LOSSES,
    PairLogRatios,
    PreferenceOptions,
    token_kl,
)
from trainer.context import TrainingContext, TrainingResult
from trainer.loop import (
    StepLoop,
    StepOutcome,
    build_optimizer,
    build_scheduler,
    chunk,
    clip_and_step,
    count_steps,
    pick_device,
)
from trainer.reward_data import PairExample, tokenize_pair
from trainer.trained_model import load_model

REFERENCE_FILE = "reference_logps.pt"


@dataclass
class PairOutputs:
    """One micro-batch's policy outputs, each (B,) over its pairs."""

    logps_chosen: Tensor
    logps_rejected: Tensor
    pairs: PairLogRatios
    chosen_nll: Tensor  # per-token NLL of the chosen response


class DpoTrainer(StepLoop):
    hp: DpoHyperparameters

    def __init__(self, ctx: TrainingContext) -> None:
        self.ctx, self.hp, self.device = ctx, ctx.hyperparameters, pick_device()
        transformers.set_seed(ctx.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(ctx.base_model_path)
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else self.tokenizer.eos_token_id
        if not ctx.training_rows:
            raise ValueError("the training file has no rows")
        self.train_examples = self._tokenize(ctx.training_rows, "training")
        self.valid_examples = self._tokenize(ctx.validation_rows or [], "validation")
        self.total_steps = count_steps(len(self.train_examples), self.hp)
        self.model = load_model(ctx.base_model_path, self.hp.lora, ctx.resume_from, self.device)
        self.model.train()
        self._check_packing(self.model, "the policy")
        self.options = PreferenceOptions(beta=self.hp.beta,
                                         label_smoothing=self.hp.label_smoothing or 0.0,
                                         tdpo_alpha=self.hp.tdpo_alpha,
                                         tdpo_stop_gradient=self.hp.tdpo_stop_gradient)
        self._separate_reference: Any = None
        self.reference_logps = ({} if self.hp.loss == "tdpo"
                                else self._cached_reference_logps())
        self.optimizer = build_optimizer(self.model, self.hp)
        self.scheduler = build_scheduler(self.optimizer, self.hp, self.total_steps)
        self.resume(ctx.resume_from)

    # -- data ------------------------------------------------------------------------------------

    def _tokenize(self, rows: list[dict[str, Any]], name: str) -> list[PairExample]:
        examples = [tokenize_pair(self.tokenizer, row, self.hp.max_seq_length) for row in rows]
        cut = sum(example.cut for example in examples)
        if cut:
            self.ctx.log(f"{cut} of {len(rows)} {name} pairs were cut to max_seq_length "
                         f"({self.hp.max_seq_length}); their log-ratios cover the tokens kept")
        return examples

    def _check_packing(self, model: Any, name: str) -> None:
        """Log when ``model`` cannot run on packed rows (`modeling.packing`)."""
        if not supports_packing(model, self.device):
            self.ctx.log(f"{name} runs on right-padded rows: packed rows did not give it the "
                         "same log-probabilities")

    def _pack(self, examples: list[PairExample], *models: Any) -> PackedBatch:
        """The pairs' 2B texts (chosen, then rejected), packed when every model allows."""
        sequences, starts = _texts(examples)
        return pack(sequences, starts, self.pad_id, self.device,
                    packed=all(supports_packing(model, self.device) for model in models))

    # -- the reference ---------------------------------------------------------------------------

    def _reference(self) -> tuple[Any, contextlib.AbstractContextManager[Any]]:
        """π_ref and the context it runs in: the adapter switched off, or a frozen model."""
        if self.hp.lora is not None and self.hp.reference is None:
            return self.model, self.model.disable_adapter()
        if self._separate_reference is None:
            self._separate_reference = self._load_reference()
        return self._separate_reference, contextlib.nullcontext()

    def _load_reference(self) -> Any:
        path = self.ctx.base_model_path
        if self.hp.reference is not None:
            if self.ctx.resolve_model is None:
                raise ValueError("reference needs the model registry, which this run has not")
            path = self.ctx.resolve_model(self.hp.reference)
            if AutoTokenizer.from_pretrained(path).get_vocab() != self.tokenizer.get_vocab():
                raise ValueError(f"reference {self.hp.reference!r} has another tokenizer than "
                                 "the base model; log-ratios need the same tokens")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                     device_map=self.device)
        model.eval().requires_grad_(False)
        self._check_packing(model, "the reference")
        return model

    @torch.no_grad()
    def _reference_logps(self, examples: list[PairExample]) -> Tensor:
        """(N, 2) Σ log π_ref of each pair's chosen and rejected response."""
        model, context = self._reference()
        parts = []
        with context:
            for rows in chunk(list(range(len(examples))), self.hp.batch_size):
                batch = self._pack([examples[i] for i in rows], model)
                logps = batch.response_logps(batch.logits(model))  # (2b,)
                parts.append(logps.view(2, -1).T)  # (b, 2)
        return torch.cat(parts).cpu()

    def _cached_reference_logps(self) -> dict[str, Tensor]:
        path = self.ctx.checkpoint_root / REFERENCE_FILE
        if path.is_file():
            return dict(torch.load(path, weights_only=True))
        cache = {"train": self._reference_logps(self.train_examples)}
        if self.valid_examples:
            cache["valid"] = self._reference_logps(self.valid_examples)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cache, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        self._separate_reference = None  # its log-probabilities are all it was needed for
        self.ctx.log(f"computed the reference's log-probabilities of "
                     f"{sum(len(v) for v in cache.values())} pairs once")
        return cache

    # -- the loss ------------------------------------------------------------------------------

    def _forward(self, examples: list[PairExample], split: str,
                 indices: list[int]) -> PairOutputs:
        n = len(examples)
        if self.hp.loss != "tdpo":
            batch = self._pack(examples, self.model)
            logps = batch.response_logps(batch.logits(self.model))  # (2B,)
            reference = self.reference_logps[split][indices].to(self.device)  # (B, 2)
            pairs = PairLogRatios(logps[:n] - reference[:, 0], logps[n:] - reference[:, 1])
            return PairOutputs(logps[:n], logps[n:], pairs, self._chosen_nll(batch, logps))
        model, context = self._reference()
        batch = self._pack(examples, self.model, model)  # one layout: the KL is per position
        logits = batch.logits(self.model)  # (R, L, V)
        with context, torch.no_grad():
            reference_logits = batch.logits(model)
        logps = batch.response_logps(logits)  # (2B,)
        ratios = logps - batch.response_logps(reference_logits)
        per_token = token_kl(reference_logits[:, :-1], logits[:, :-1])  # (R, L-1)
        seq_kl = batch.per_sequence(per_token * batch.response_mask)  # (2B,)
        pairs = PairLogRatios(ratios[:n], ratios[n:], seq_kl[:n], seq_kl[n:])
        return PairOutputs(logps[:n], logps[n:], pairs, self._chosen_nll(batch, logps))

    @staticmethod
    def _chosen_nll(batch: PackedBatch, logps: Tensor) -> Tensor:
        """(B,) per-token NLL of each chosen response; logps (2B,) chosen first."""
        n = len(logps) // 2
        return -logps[:n] / batch.response_token_counts()[:n].clamp(min=1.0)

    def _loss(self, outputs: PairOutputs) -> Tensor:
        """(B,) the loss of each pair, with the chosen response's NLL when asked (RPO)."""
        loss = PREFERENCE_LOSSES[self.hp.loss](outputs.pairs, self.options)
        return loss + self.hp.sft_coefficient * outputs.chosen_nll

    def _statistics(self, outputs: list[PairOutputs], prefix: str = "") -> dict[str, float]:
        def cat(get: Any) -> Tensor:
            return torch.cat([get(o).detach() for o in outputs])
        chosen = self.hp.beta * cat(lambda o: o.pairs.chosen)  # (N,) implicit rewards
        rejected = self.hp.beta * cat(lambda o: o.pairs.rejected)
        return {f"{prefix}{name}": float(value) for name, value in {
            "loss": torch.cat([self._loss(o).detach() for o in outputs]).mean(),
            "reward_accuracy": (chosen > rejected).float().mean(),
            "rewards_chosen": chosen.mean(), "rewards_rejected": rejected.mean(),
            "reward_margin": (chosen - rejected).mean(),
            "logps_chosen": cat(lambda o: o.logps_chosen).mean(),
            "logps_rejected": cat(lambda o: o.logps_rejected).mean()}.items()}

    # -- the StepLoop contract -------------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        return len(self.train_examples)

    def step(self, indices: list[int]) -> StepOutcome:
        outputs = []
        for rows in chunk(indices, self.hp.batch_size):
            output = self._forward([self.train_examples[i] for i in rows], "train", rows)
            (self._loss(output).sum() / len(indices)).backward()
            outputs.append(output)
        grad_norm = clip_and_step(self.model, self.optimizer, self.scheduler,
                                  self.hp.max_grad_norm)
        tokens = sum(len(self.train_examples[i].chosen_ids) + len(self.train_examples[i]
                     .rejected_ids) for i in indices)
        return StepOutcome({**self._statistics(outputs), "grad_norm": grad_norm}, tokens)

    @property
    def has_validation(self) -> bool:
        return bool(self.valid_examples)

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        self.model.eval()
        outputs = [self._forward([self.valid_examples[i] for i in rows], "valid", rows)
                   for rows in chunk(list(range(len(self.valid_examples))), self.hp.batch_size)]
        self.model.train()
        return self._statistics(outputs, prefix="valid_")

    def train(self) -> TrainingResult:
        metrics = self.run_steps()
        out = self.ctx.output_dir
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(out)
        return TrainingResult(output_dir=out, trained_tokens=self.state.trained_tokens,
                              kind="fine_tuned" if self.hp.lora is None else "lora_adapter",
                              final_metrics=metrics,
                              metadata={"loss": self.hp.loss, "beta": self.hp.beta,
                                        "reference": self.hp.reference or self.ctx.base_model})


def _texts(examples: list[PairExample]) -> tuple[list[list[int]], list[int]]:
    """The 2B texts of B pairs, chosen then rejected, and where each one's response starts."""
    return ([e.chosen_ids for e in examples] + [e.rejected_ids for e in examples],
            [e.chosen_start for e in examples] + [e.rejected_start for e in examples])


def run(ctx: TrainingContext) -> TrainingResult:
    """Train per ctx.hyperparameters (DpoHyperparameters); raises JobStopped if stopped."""
    return DpoTrainer(ctx).train()
