"""Tensor math for reward modeling and preference optimisation: sequence log-probs, losses, metrics.

Pure functions and one small class per loss, torch only (no transformers, no device names), so the
unit tests import this without a model or a GPU. The trainers own the forward passes; this module
only turns their outputs into numbers.

Shapes: B is the number of preference pairs, T the (shifted) sequence length, V the vocabulary.

Per-pair weights: every pairwise loss takes optional (B,) ``weights`` (the data's ``weight`` column, >= 0)
and returns the weighted mean ``sum_i w_i * loss_i / sum_i w_i`` (:func:`weighted_mean`) instead of the
plain mean; no weights is the plain mean. A pair of weight 0 then changes neither the loss nor its gradient,
so the batch trains as if it were not there.

Why not TRL's losses: in trl 1.16 the DPO losses live inline in ``DPOTrainer._compute_loss`` (a
15-branch ``elif`` on ``loss_type`` that also runs the model), so they cannot be called on tensors.
We keep one class per loss instead (torchtune's ``DPOLoss`` layout) and check ours against TRL's
formulas in ``tests/unit/test_losses.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from alignment.data.chat import IGNORE_INDEX


# --------------------------------------------------------------------------------------------------
# Sequence log-probabilities
# --------------------------------------------------------------------------------------------------
def sequence_logps(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Summed log-probability of each sequence's labelled tokens, and how many tokens were labelled.

    ``log pi(y|x) = sum_t log softmax(logits_t / temperature)[y_t]`` over the positions whose label is
    not ``ignore_index`` (the prompt and padding); this is the sequence log-likelihood that DPO
    (Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7) compares between policy and
    reference. Divide the sum by the count for the length-averaged log-prob that IPO and SimPO use.

    Args:
        logits: (B, T, V) already aligned for next-token prediction: the caller passes
            ``logits[:, :-1]`` with ``labels[:, 1:]``.
        labels: (B, T) token ids, ``ignore_index`` where no log-prob is wanted.
        ignore_index: label value to skip.
        temperature: the logits are divided by this first (match the sampling temperature when
            scoring generated text).

    Returns:
        ``(logps, counts)``: (B,) summed log-probs in float32 (float64 for float64 logits), 0 for a
        sequence with no labelled token, and (B,) int64 number of labelled tokens.

    Memory: ``log_softmax(logits).gather(labels)`` keeps its (B, T, V) output alive for the backward
    pass, and so does ``F.cross_entropy(reduction="none")``, which is log_softmax + nll_loss inside
    ATen, so neither saves memory over the other. We use the identity
    ``log_softmax(x)[y] = x[y] - logsumexp(x)``: logsumexp saves only its input (the logits, which
    the caller holds anyway) and a (B, T) result, and recomputes the softmax in backward. The maths
    runs in float32: in bfloat16 the subtraction of two numbers around 20 would lose about two
    decimal digits per token. For bf16 logits, or temperature != 1, the float32 (B, T, V) copy is the
    one extra tensor kept, the same as log_softmax in float32 would keep; a fused kernel (Liger, TRL's
    triton path) is the next step if that is still too much.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")

    # Naive loop, for reading:
    #   for b, t: if labels[b, t] != ignore_index:
    #       logps[b] += log_softmax(logits[b, t] / temperature)[labels[b, t]]; counts[b] += 1
    mask = labels != ignore_index  # (B, T) True where the token is scored
    safe_labels = labels.masked_fill(~mask, 0)  # (B, T) any valid id; those positions are zeroed below
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (B, T, V) no copy if fp32/fp64
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # (B, T) logit of the label
    token_logps = picked - torch.logsumexp(logits, dim=-1)  # (B, T) log softmax at the label
    token_logps = token_logps.masked_fill(~mask, 0.0)  # (B, T) 0 (and no gradient) where ignored
    return token_logps.sum(-1), mask.sum(-1)  # (B,), (B,)


# --------------------------------------------------------------------------------------------------
# Per-pair weights
# --------------------------------------------------------------------------------------------------
def weighted_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """``sum_i w_i * v_i / sum_i w_i`` over (B,) ``values`` and (B,) ``weights`` (>= 0); the plain mean when
    ``weights`` is None.

    A pair of weight 0 contributes nothing: its value is zeroed before the product, so even an infinite loss
    there (0 * inf is NaN) stays out of the result. When every weight is 0 the result is 0 with a zero
    gradient: nothing in the batch is trained on. The weights are data and get no gradient.
    """
    if weights is None:
        return values.mean()
    if weights.shape != values.shape:
        raise ValueError(f"weights {tuple(weights.shape)} do not match the per-pair values {tuple(values.shape)}")
    weights = weights.detach().to(device=values.device, dtype=values.dtype)  # (B,)
    # Naive loop, for reading: num = den = 0; for i: if w[i] > 0: num += w[i] * v[i]; den += w[i]; num / den
    total = (values.masked_fill(weights == 0, 0.0) * weights).sum()
    # No branch on the denominator (that would sync a GPU): with every weight 0 the numerator is exactly 0.
    return total / weights.sum().clamp(min=torch.finfo(values.dtype).tiny)


# --------------------------------------------------------------------------------------------------
# Reward model
# --------------------------------------------------------------------------------------------------
def bradley_terry_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | None = None, center_coef: float = 0.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Pairwise reward-model loss: ``mean(-log sigmoid(r_c - r_r - margin)) + center_coef * mean((r_c + r_r)^2)``,
    both means weighted by ``weights`` when given (:func:`weighted_mean`).

    The first term is the Bradley-Terry negative log-likelihood of the human choice (Ouyang et al.
    2022, "Training language models to follow instructions with human feedback", Eq. 1). ``margin``
    asks for a larger gap on pairs the annotator rated as clearly different (Touvron et al. 2023,
    "Llama 2", Eq. 2). The second term pulls the mean reward towards zero, since the BT loss only
    sees differences and leaves the offset free to drift (Eisenstein et al. 2023, "Helping or
    herding? Reward model ensembles mitigate but do not eliminate reward hacking"); it is TRL's
    ``center_rewards_coefficient``.

    Args:
        chosen_scores: (B,) scalar reward of each chosen response.
        rejected_scores: (B,) scalar reward of each rejected response.
        margin: (B,) optional required gap per pair, >= 0.
        center_coef: weight of the centering term; 0 turns it off.
        weights: (B,) optional per-pair weights >= 0; a pair of weight 0 is left out of both terms.

    Returns:
        Scalar loss, (weighted) mean over the batch.
    """
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(f"chosen and rejected scores differ in shape: {tuple(chosen_scores.shape)} vs "
                         f"{tuple(rejected_scores.shape)}")
    diff = chosen_scores - rejected_scores  # (B,)
    if margin is not None:
        diff = diff - margin
    # -log sigmoid(x) written as -logsigmoid(x): log(sigmoid(x)) underflows to -inf for x < -100 or so.
    loss = weighted_mean(-F.logsigmoid(diff), weights)
    if center_coef:
        loss = loss + center_coef * weighted_mean((chosen_scores + rejected_scores) ** 2, weights)
    return loss


def reward_model_metrics(chosen_scores: Tensor, rejected_scores: Tensor) -> dict[str, float]:
    """Batch means under the names shared by every phase.

    ``rewards/accuracies`` is the fraction of pairs with chosen > rejected; a tie counts as wrong.
    Values are for this process's batch; averaging across processes is the caller's job.
    """
    chosen = chosen_scores.detach().float()  # (B,)
    rejected = rejected_scores.detach().float()  # (B,)
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
    }


# --------------------------------------------------------------------------------------------------
# Preference losses: one class per algorithm, same call signature
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DPOOutput:
    loss: Tensor  # () mean of ``losses``, weighted by the pairs' weights when given; the one to backpropagate
    losses: Tensor  # (B,) per-pair loss
    chosen_rewards: Tensor  # (B,) implicit reward of the chosen response, detached (DPO: beta * (logp_c - ref_logp_c))
    rejected_rewards: Tensor  # (B,) same for the rejected response, detached


class PreferenceLoss(Protocol):
    """What a trainer needs from a preference loss (a type for the registry, not a base class).

    ``needs_reference``: the trainer must compute reference-model log-probs and pass them in.
    ``average_logps``: the trainer must pass length-averaged log-probs (``logps / counts`` from
    :func:`sequence_logps`) for policy and reference alike, instead of sums.
    """

    needs_reference: ClassVar[bool]
    average_logps: ClassVar[bool]

    def __call__(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        ref_chosen_logps: Tensor | None = None,
        ref_rejected_logps: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> DPOOutput: ...


def _check_reference(name: str, ref_chosen_logps: Tensor | None, ref_rejected_logps: Tensor | None) -> None:
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"{name} needs reference log-probs (needs_reference = True); got None")


def _check_beta(beta: float) -> None:
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")


def chosen_nll(chosen_logps: Tensor, chosen_counts: Tensor, averaged: bool, weights: Tensor | None = None) -> Tensor:
    """RPO's extra term (Pang et al. 2024, "Iterative Reasoning Preference Optimization"): the negative
    log-likelihood of the chosen answers, per token, averaged over pairs:
    ``mean_i(-logp(y_c_i) / |y_c_i|)``, weighted by the pairs' ``weights`` when given (so a pair of weight 0
    does not teach its chosen answer either).

    Added to a preference loss as ``alpha * chosen_nll``, it keeps the chosen answers likely while the
    margin grows (plain DPO can raise the margin by lowering both answers). ``averaged``: the log-probs
    are already per-token means (IPO, SimPO).
    """
    per_token = chosen_logps if averaged else chosen_logps / chosen_counts.clamp(min=1).to(chosen_logps.dtype)
    return -weighted_mean(per_token, weights)


class DPOLoss:
    """Sigmoid DPO (Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7), optionally conservative.

    With ``h = (logp_c - ref_logp_c) - (logp_r - ref_logp_r)`` over summed sequence log-probs:
    ``loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)``.
    ``eps = label_smoothing`` is the assumed probability that a label is flipped (cDPO, Mitchell 2023,
    "A note on DPO with noisy preferences & relationship to IPO"); with eps > 0 the loss is minimised
    at a finite ``h`` instead of pushing the margin to infinity. eps = 0 is plain DPO. (TRL 1.16's
    DPOTrainer ignores label_smoothing for "sigmoid"; its CPO trainer uses this same form.)

    Args:
        beta: strength of the KL penalty towards the reference; typical 0.1.
        label_smoothing: eps in [0, 0.5).
    """

    needs_reference: ClassVar[bool] = True
    average_logps: ClassVar[bool] = False

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        _check_beta(beta)
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta = beta
        self.label_smoothing = label_smoothing

    def __call__(
        self,
        policy_chosen_logps: Tensor,  # (B,) summed log pi(y_c|x)
        policy_rejected_logps: Tensor,  # (B,) summed log pi(y_r|x)
        ref_chosen_logps: Tensor | None = None,  # (B,) summed log pi_ref(y_c|x)
        ref_rejected_logps: Tensor | None = None,  # (B,) summed log pi_ref(y_r|x)
        weights: Tensor | None = None,  # (B,) per-pair weights >= 0 (None: all 1)
    ) -> DPOOutput:
        _check_reference("DPOLoss", ref_chosen_logps, ref_rejected_logps)
        chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
        rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
        logits = self.beta * (chosen_logratios - rejected_logratios)  # (B,) beta * h
        eps = self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)  # (B,)
        return DPOOutput(
            loss=weighted_mean(losses, weights),
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
        )


class IPOLoss:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", Eq. 17).

    ``loss = (h - 1 / (2 * beta))^2`` with ``h`` the same log-ratio difference as DPO, so the margin
    is regressed to a fixed target instead of pushed to infinity (beta is the paper's tau).

    The CALLER passes length-averaged log-probs (``average_logps = True``) for policy and reference:
    summed log-probs make the squared loss grow with response length. TRL divides each log-ratio by
    its completion length for IPO, which is the same ``h``; the IPO authors confirmed to TRL that
    the paper's results used this normalised form. Rewards are ``beta * (avg logp - avg ref logp)``.

    Args:
        beta: regularisation strength (tau); the target margin is ``1 / (2 * beta)``.
    """

    needs_reference: ClassVar[bool] = True
    average_logps: ClassVar[bool] = True

    def __init__(self, beta: float = 0.1) -> None:
        _check_beta(beta)
        self.beta = beta

    def __call__(
        self,
        policy_chosen_logps: Tensor,  # (B,) length-averaged log pi(y_c|x)
        policy_rejected_logps: Tensor,  # (B,) length-averaged log pi(y_r|x)
        ref_chosen_logps: Tensor | None = None,  # (B,) length-averaged log pi_ref(y_c|x)
        ref_rejected_logps: Tensor | None = None,  # (B,) length-averaged log pi_ref(y_r|x)
        weights: Tensor | None = None,  # (B,) per-pair weights >= 0 (None: all 1)
    ) -> DPOOutput:
        _check_reference("IPOLoss", ref_chosen_logps, ref_rejected_logps)
        chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
        rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
        h = chosen_logratios - rejected_logratios  # (B,)
        losses = (h - 1 / (2 * self.beta)) ** 2  # (B,)
        return DPOOutput(
            loss=weighted_mean(losses, weights),
            losses=losses,
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
        )


class SimPOLoss:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", Eq. 6).

    ``loss = -log sigmoid(beta * (avg_logp_c - avg_logp_r) - gamma)``: the implicit reward is the
    policy's own length-averaged log-prob, ``beta * avg_logp``, so no reference model is run
    (``needs_reference = False``; the ref arguments are ignored and may be None), and ``gamma`` is a
    target reward margin. The caller passes length-averaged log-probs (``average_logps = True``).

    Args:
        beta: reward scale; the paper uses 2.0 to 2.5 (10 for Gemma).
        gamma: target margin; the paper suggests ``gamma / beta`` around 0.5.
    """

    needs_reference: ClassVar[bool] = False
    average_logps: ClassVar[bool] = True

    def __init__(self, beta: float = 2.0, gamma: float = 1.0) -> None:
        _check_beta(beta)
        self.beta = beta
        self.gamma = gamma

    def __call__(
        self,
        policy_chosen_logps: Tensor,  # (B,) length-averaged log pi(y_c|x)
        policy_rejected_logps: Tensor,  # (B,) length-averaged log pi(y_r|x)
        ref_chosen_logps: Tensor | None = None,  # unused
        ref_rejected_logps: Tensor | None = None,  # unused
        weights: Tensor | None = None,  # (B,) per-pair weights >= 0 (None: all 1)
    ) -> DPOOutput:
        logits = self.beta * (policy_chosen_logps - policy_rejected_logps) - self.gamma  # (B,)
        losses = -F.logsigmoid(logits)  # (B,)
        return DPOOutput(
            loss=weighted_mean(losses, weights),
            losses=losses,
            chosen_rewards=(self.beta * policy_chosen_logps).detach(),
            rejected_rewards=(self.beta * policy_rejected_logps).detach(),
        )


# The config's ``loss_type`` picks one; the names follow TRL's ``loss_type`` values.
PREFERENCE_LOSSES: dict[str, type[PreferenceLoss]] = {"sigmoid": DPOLoss, "ipo": IPOLoss, "simpo": SimPOLoss}


def preference_metrics(out: DPOOutput, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor) -> dict[str, float]:
    """Reward metrics of a preference loss plus ``logps/chosen`` and ``logps/rejected`` (batch means).

    The log-probs are whatever was passed to the loss (summed for DPO, averaged for IPO and SimPO).
    Same names and tie rule as :func:`reward_model_metrics`; values are for this process's batch.
    """
    return {
        **reward_model_metrics(out.chosen_rewards, out.rejected_rewards),
        "logps/chosen": policy_chosen_logps.detach().float().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().float().mean().item(),
    }
