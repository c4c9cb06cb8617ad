"""Tensor math of PPO for language models: masks, KL estimates, reward shaping, GAE and the critic-free
group baselines (GRPO, Dr. GRPO, RLOO, REINFORCE++), loss aggregation, the two losses.

Pure functions and two small controller classes, torch only (no transformers, no device names), so
the unit tests import this without a model or a GPU. The trainer owns the
generation and the forward passes; this module turns their outputs into rewards, advantages and losses.

Shapes: B is the number of rollouts (prompt + sampled response), T the response length (the prompt
is already cut off), V the vocabulary. Every (B, T) tensor is aligned with the response tokens:
``logprobs[b, t]`` is ``log pi(token_t | prompt, tokens_<t)`` of the token sampled at step t.

Masks: ``mask`` is (B, T), 1 (or True) on real response tokens including the stop token and 0 on
the padding after it (:func:`response_mask_from_stop` builds it). Bool, integer and float 0/1 masks
are all accepted. Masked positions never influence a result and the (B, T) outputs are 0 there.
Their values are replaced, not multiplied by 0, so an inf or nan there does not leak into the
forward results; gradients need them finite (log-probs of padding from a model are).

Sources: the layout follows torchtune's ``rlhf/rewards.py`` (``estimate_advantages``, ``whiten``)
and OpenRLHF's ``ppo_utils`` (``compute_approx_kl``, ``compute_reward``, ``kl_controller.py``); the
statistics mirror the OpenAI ``lm-human-preferences`` code that TRL's PPO trainers ported. trl 1.16
no longer ships a PPO trainer, so there is nothing of TRL's to call for these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor


def _check_shapes(**tensors: Tensor) -> None:
    shapes = {name: tuple(x.shape) for name, x in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"expected tensors of one shape, got {shapes}")


def _float_mask(mask: Tensor, like: Tensor) -> Tensor:
    """0/1 mask in the dtype of ``like`` (bool and integer masks become 0.0/1.0)."""
    return mask.to(dtype=like.dtype if like.is_floating_point() else torch.float32)


# --------------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------------
def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1: ``sum(x * mask) / sum(mask)``.

    Args:
        x: any shape, typically (B, T).
        mask: same shape as ``x``, 0/1.
        dim: reduce this dimension only (e.g. ``dim=-1`` gives a (B,) per-row mean); None reduces all.

    Returns:
        Scalar, or ``x`` reduced over ``dim``. An empty mask (or an empty row with ``dim``) gives 0, not
        nan: a micro-batch with no token to learn from then contributes a zero loss with zero gradient.
    """
    _check_shapes(x=x, mask=mask)
    keep = mask.bool()
    total = torch.where(keep, x, torch.zeros_like(x))  # masked values (possibly inf/nan) replaced, not multiplied
    count = keep.sum() if dim is None else keep.sum(dim)
    total = total.sum() if dim is None else total.sum(dim)
    return total / count.clamp(min=1).to(total.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked positions (all dimensions at once), a scalar.

    ``unbiased`` applies Bessel's correction ``n / (n - 1)`` with n the number of masked positions.
    With n <= 1 the variance is 0 (one value has no spread); we do not raise, which would need a
    device-to-host sync on every call.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum().to(var.dtype)
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise ``x`` to mean 0 and variance 1 over the masked positions: ``(x - mean) / sqrt(var + 1e-8)``.

    Whitening advantages per batch is a standard PPO detail (OpenAI baselines; torchtune's ``whiten``).
    ``shift_mean=False`` adds the mean back, so only the scale changes; that is the variant used on
    rewards, where the sign of the mean carries information (the OpenAI ``lm-human-preferences`` code
    and TRL's old ``masked_whiten``). The mean and (unbiased) variance are over the whole batch, not
    per row.

    Returns:
        Same shape as ``x``; 0 at masked positions (TRL left the whitened padding there instead).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# --------------------------------------------------------------------------------------------------
# KL penalty and reward shaping
# --------------------------------------------------------------------------------------------------
def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: Literal["k1", "k3"] = "k1") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from the log-probs of tokens sampled from the policy.

    Schulman 2020, "Approximating KL divergence" (http://joschu.net/blog/kl-approx.html). With tokens
    x ~ p = pi (the policy that generated them), q = pi_ref, and ``r = q(x) / p(x) = exp(ref - logp)``:

    - ``k1 = -log r = log p - log q``: unbiased for KL(p || q) but a single sample can be negative;
      this is the penalty of Ziegler et al. 2019 and Stiennon et al. 2020.
    - ``k3 = (r - 1) - log r``: also unbiased (E_p[r] = 1), never negative, lower variance when p and
      q are close; OpenRLHF's ``low_var_kl`` (and GRPO's KL term).

    Both are 0 where the two models agree and positive on average when the policy puts more mass on
    its samples than the reference does. The tokens must come from the policy: with tokens from the
    reference the same formulas estimate something else.

    Args:
        logprobs: (B, T) log pi(token_t) of the sampled tokens under the policy.
        ref_logprobs: (B, T) log pi_ref(token_t) of the same tokens under the reference model.

    Returns:
        (B, T) per-token estimate, unmasked (apply the response mask yourself). k3 is not clipped:
        ``exp(ref - logp)`` overflows float32 only when the reference is about e^88 times likelier
        than the policy on a token the policy sampled.
    """
    _check_shapes(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = logprobs - ref_logprobs  # (B, T) log p - log q = -log r
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        # (r - 1) - log r with log r = -log_ratio; expm1 keeps precision when r is close to 1.
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1' or 'k3'")


def shaped_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float | Tensor,
    kind: Literal["k1", "k3"] = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards: a KL penalty at every response token plus the sequence score at the last one.

    ``R(x, y) = r(x, y) - beta * KL`` with the KL spread over tokens (Ziegler et al. 2019, "Fine-Tuning
    Language Models from Human Preferences", Sec. 2.2; Stiennon et al. 2020, "Learning to summarize
    from human feedback", Eq. 2): token t gets ``-kl_coef * kl_t`` and the last real token also gets
    the reward model's score, as in OpenRLHF's ``compute_reward``.

    Args:
        scores: (B,) one score per rollout (reward model output, minus any penalty the caller adds).
        logprobs: (B, T) log-probs of the sampled tokens under the policy at rollout time.
        ref_logprobs: (B, T) same tokens under the reference model.
        mask: (B, T) response mask; rows may end at different positions. The score goes to the last
            position where the mask is 1; a row with no response token gets no score.
        kl_coef: beta, a float or a 0-d tensor (the value of a KL controller).
        kind: KL estimator, see :func:`kl_estimate`.

    Returns:
        ``(rewards, kl)``: (B, T) each, both 0 at masked positions. Nothing is detached: pass rollout
        tensors computed under ``torch.no_grad()``.
    """
    _check_shapes(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"expected scores of shape ({logprobs.shape[0]},), got {tuple(scores.shape)}")
    keep = mask.bool()  # (B, T)
    kl = kl_estimate(logprobs, ref_logprobs, kind)  # (B, T)
    kl = torch.where(keep, kl, torch.zeros_like(kl))  # (B, T) 0 on padding, whatever the log-probs hold there
    rewards = -kl_coef * kl  # (B, T)

    # Naive loop, for reading:
    #   for b: last = max(t for t in range(T) if mask[b, t]); rewards[b, last] += scores[b]
    T = mask.shape[-1]
    positions = torch.arange(T, device=mask.device)  # (T,)
    last = torch.where(keep, positions, -1).amax(dim=-1)  # (B,) index of the last real token, -1 if none
    has_response = last >= 0  # (B,)
    score = torch.where(has_response, scores, torch.zeros_like(scores)).to(rewards.dtype)  # (B,)
    rewards = rewards.scatter_add(-1, last.clamp(min=0).unsqueeze(-1), score.unsqueeze(-1))  # (B, T)
    return rewards, kl


# --------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation", Eq. 16): ``A_t = sum_l (gamma * lam)^l * delta_{t+l}`` with
    ``delta_t = r_t + gamma * V_{t+1} - V_t``.

    Each row is one episode that ends at its last real token: the value after it is 0 (no
    bootstrapping, the response is finished or truncated and the caller penalises that through the
    score). ``lam = 1`` gives the discounted return minus the value; ``lam = 0`` the one-step TD error.

    Args:
        rewards: (B, T) per-token rewards (:func:`shaped_rewards`).
        values: (B, T) value-head estimates V(s_t) at rollout time.
        mask: (B, T) response mask. The real tokens of a row must be contiguous (right padding, or
            left padding); a hole in the middle would end the episode there.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``: (B, T) each, ``returns = advantages + values`` (the value-loss
        target, TD(lambda)); both 0 at masked positions. Not whitened; see :func:`masked_whiten`.
    """
    _check_shapes(rewards=rewards, values=values, mask=mask)
    keep = mask.bool()  # (B, T)
    m = _float_mask(mask, rewards)  # (B, T)
    rewards = torch.where(keep, rewards, torch.zeros_like(rewards))  # (B, T)
    values = torch.where(keep, values, torch.zeros_like(values))  # (B, T) V = 0 after the episode ends

    # Naive loop, for reading (the code below is this with the b loop vectorised):
    #   for b in range(B):
    #       running = 0
    #       for t in reversed(range(T)):
    #           if not mask[b, t]: advantages[b, t] = 0; running = 0; continue
    #           next_value = values[b, t + 1] if t + 1 < T and mask[b, t + 1] else 0
    #           delta = rewards[b, t] + gamma * next_value - values[b, t]
    #           running = delta + gamma * lam * running
    #           advantages[b, t] = running
    T = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)  # (B, T)
    running = torch.zeros_like(rewards[:, 0])  # (B,) A_{t+1}, 0 past the end
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)  # (B,) 0 if t+1 is padding
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        running = (delta + gamma * lam * running) * m[:, t]  # (B,) reset to 0 on padding
        advantages[:, t] = running
    returns = advantages + values  # (B, T)
    return advantages, returns


GroupEstimator = Literal["grpo", "dr_grpo", "rloo"]


def group_advantages(scores: Tensor, group_size: int, kind: GroupEstimator, eps: float = 1e-6) -> Tensor:
    """Critic-free advantages from several sampled answers to the same prompt: each answer is judged
    against its siblings, so how hard the prompt is drops out of the advantage.

    ``scores`` holds ``group_size`` consecutive answers per prompt (answers ``g*k .. g*k + k-1`` share a
    prompt). With ``r`` one group's scores, ``mean`` and ``std`` (unbiased) over its k answers:

    - ``grpo``: ``(r_i - mean) / (std + eps)`` (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, Sec. 4.1.2);
    - ``dr_grpo``: ``r_i - mean``, no division by std, which up-weights groups that barely differ
      (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783, Sec. 3.2);
    - ``rloo``: ``r_i - mean_{j != i} r_j = k / (k - 1) * (r_i - mean)``, the leave-one-out baseline
      (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740, Eq. 8; Kool et al. 2019).

    A group whose answers all scored the same gets 0 for every answer: nothing to learn from it.

    Args:
        scores: (B,) one score per answer, B a multiple of group_size.
        group_size: k >= 2 answers per prompt.
        kind: the estimator.
        eps: keeps grpo finite on a group with no spread.

    Returns:
        (B,) advantages, one per answer (broadcast them over its tokens).
    """
    if group_size < 2:
        raise ValueError(f"group advantages need at least 2 answers per prompt, got group_size={group_size}")
    if scores.ndim != 1 or scores.shape[0] % group_size:
        raise ValueError(f"expected (B,) scores with B a multiple of {group_size}, got {tuple(scores.shape)}")
    groups = scores.view(-1, group_size)  # (G, k)
    mean = groups.mean(dim=1, keepdim=True)  # (G, 1)
    if kind == "grpo":
        out = (groups - mean) / (groups.std(dim=1, keepdim=True) + eps)
    elif kind == "dr_grpo":
        out = groups - mean
    elif kind == "rloo":
        out = (groups - mean) * group_size / (group_size - 1)
    else:
        raise ValueError(f"unknown group estimator {kind!r}; expected 'grpo', 'dr_grpo' or 'rloo'")
    return out.reshape(-1)


def informative_groups(scores: Tensor, group_size: int, tol: float = 1e-6) -> Tensor:
    """Which prompts' answers did not all get the same reward: (B,) scores, ``group_size`` consecutive answers
    per prompt -> (B / group_size,) bool. A group whose rewards are all equal gets a zero advantage from every
    group baseline, so it adds nothing to the policy gradient; DAPO's dynamic sampling (Yu et al. 2025,
    arXiv 2503.14476, Sec. 3.2) drops such groups and samples other prompts in their place.

    Args:
        scores: (B,) one reward per answer, B a multiple of group_size.
        group_size: k >= 1 answers per prompt (a group of one is never informative).
        tol: rewards closer than this count as equal.
    """
    if scores.ndim != 1 or scores.shape[0] % group_size:
        raise ValueError(f"expected (B,) scores with B a multiple of {group_size}, got {tuple(scores.shape)}")
    groups = scores.view(-1, group_size)  # (G, k)
    return (groups.max(dim=1).values - groups.min(dim=1).values) > tol  # (G,)


def group_mean_baseline(scores: Tensor, group_size: int) -> Tensor:
    """``scores`` minus the mean of their group (``group_size`` consecutive answers per prompt); unchanged
    when group_size is 1. The baseline of REINFORCE++ with several answers per prompt (Hu 2025,
    arXiv 2501.03262, "REINFORCE++-baseline")."""
    if group_size == 1:
        return scores
    groups = scores.view(-1, group_size)  # (G, k)
    return (groups - groups.mean(dim=1, keepdim=True)).reshape(-1)


def returns_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """Undiscounted reward-to-go ``A_t = sum_{s >= t} r_s`` over each row's response tokens, 0 on padding:
    the advantage of REINFORCE++ (Hu 2025, arXiv 2501.03262, Eq. 6 with gamma = 1) before it is whitened
    over the batch. With the score at the last token and a KL penalty at every token (:func:`shaped_rewards`),
    each token's advantage is the score minus the KL still to come.

    Args:
        rewards: (B, T) per-token rewards.
        mask: (B, T) response mask.

    Returns:
        (B, T) returns.
    """
    _check_shapes(rewards=rewards, mask=mask)
    r = torch.where(mask.bool(), rewards, torch.zeros_like(rewards))  # (B, T)
    return r.flip(-1).cumsum(-1).flip(-1) * _float_mask(mask, rewards)  # (B, T) suffix sums


Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def aggregate_loss(loss: Tensor, mask: Tensor, aggregation: Aggregation = "token_mean",
                   norm: int | None = None) -> Tensor:
    """One scalar from per-token loss terms.

    - ``token_mean``: the mean over every response token of the batch; a long answer weighs as much per
      token as a short one (PPO as OpenAI and TRL wrote it; DAPO's token-level loss, arXiv 2503.14476 Sec. 3.3);
    - ``seq_mean_token_mean``: the mean over each answer's tokens, then over answers; each answer weighs
      the same, so the tokens of long answers weigh less (GRPO's Eq. 3, arXiv 2402.03300);
    - ``seq_mean_token_sum_norm``: each answer's token sum divided by the constant ``norm`` (the
      generation budget), then the mean over answers: no length bias either way (Dr. GRPO, arXiv 2503.20783).

    Args:
        loss: (B, T) per-token terms.
        mask: (B, T) response mask.
        aggregation: one of the three above.
        norm: the constant of ``seq_mean_token_sum_norm`` (required there, ignored otherwise).

    Returns:
        Scalar.
    """
    _check_shapes(loss=loss, mask=mask)
    if aggregation == "token_mean":
        return masked_mean(loss, mask)
    keep = mask.bool()
    per_token = torch.where(keep, loss, torch.zeros_like(loss))  # (B, T)
    if aggregation == "seq_mean_token_mean":
        per_row = per_token.sum(-1) / keep.sum(-1).clamp(min=1).to(loss.dtype)  # (B,)
    elif aggregation == "seq_mean_token_sum_norm":
        if not norm or norm <= 0:
            raise ValueError("seq_mean_token_sum_norm needs a positive norm (the generation budget in tokens)")
        per_row = per_token.sum(-1) / norm  # (B,)
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    return per_row.mean()


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float,
    clip_range_high: float | None = None, aggregation: Aggregation = "token_mean", norm: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate objective, as a loss (Schulman et al. 2017, "Proximal Policy Optimization
    Algorithms", Eq. 7): ``mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))``.

    ``ratio = exp(logprobs - old_logprobs)``. The max of the two negated terms is the min of the
    objective, the pessimistic bound: once the ratio has moved past ``1 +- eps`` in the direction
    the advantage rewards, the clipped branch wins and that token's gradient is 0. The mean is over
    all response tokens of the batch (token-level, as in the OpenAI and TRL code).

    Args:
        logprobs: (B, T) log-probs of the rollout tokens under the policy being trained (with grad).
        old_logprobs: (B, T) the same at rollout time (no grad).
        advantages: (B, T) from :func:`gae`, usually whitened.
        mask: (B, T) response mask.
        clip_range: epsilon, e.g. 0.2.
        clip_range_high: the upper epsilon when it differs from the lower one: DAPO's "clip-higher" (Yu et
            al. 2025, arXiv 2503.14476, Sec. 3.1) lets unlikely tokens with a positive advantage grow
            further (e.g. 0.28) so the policy keeps exploring. None: ``clip_range``.
        aggregation, norm: how the per-token terms become one loss, see :func:`aggregate_loss`.

    Returns:
        ``(loss, stats)``: scalar loss and detached scalars ``policy/clipfrac`` (fraction of tokens
        where the clipped branch is strictly larger, i.e. has zeroed the gradient), ``policy/approxkl``
        (``0.5 * mean((logprobs - old)^2)``, the k2 estimate of KL(old || new) that the OpenAI/TRL code
        logs) and ``policy/ratio`` (mean ratio).
    """
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T) pi / pi_old
    unclipped = -advantages * ratio  # (B, T)
    high = clip_range if clip_range_high is None else clip_range_high
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)  # (B, T)
    loss = aggregate_loss(torch.maximum(unclipped, clipped), mask, aggregation, norm)
    with torch.no_grad():
        stats = {
            "policy/clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "policy/ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: ``0.5 * mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)``.

    ``V_clip = old + clip(V - old, -eps_v, eps_v)`` keeps the value head near its rollout-time
    estimate, like the ratio clip does for the policy (OpenAI baselines' ``ppo2``, kept by the
    ``lm-human-preferences`` code and TRL). The max makes it pessimistic: it only removes gradient
    when the unclipped error is the smaller one. A very large ``clip_range_value`` turns clipping off.

    Args:
        values: (B, T) value-head output of the model being trained (with grad).
        old_values: (B, T) value-head output at rollout time.
        returns: (B, T) targets from :func:`gae`.
        mask: (B, T) response mask.
        clip_range_value: eps_v, in the units of the value (e.g. 0.2).

    Returns:
        ``(loss, stats)``: scalar loss and detached scalars ``value/clipfrac`` (fraction of tokens where
        the clipped error is strictly larger), ``value/mean`` (mean V) and ``value/error`` (mean
        ``(V - R)^2``).
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)  # (B, T)
    unclipped_err = (values - returns) ** 2  # (B, T)
    clipped_err = (clipped_values - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        stats = {
            "value/clipfrac": masked_mean((clipped_err > unclipped_err).to(values.dtype), mask),
            "value/mean": masked_mean(values, mask),
            "value/error": masked_mean(unclipped_err, mask),
        }
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position, in nats.

    ``H = -sum_v p_v log p_v`` with ``log p_v = logits_v - logsumexp(logits)``, rearranged as
    ``H = logsumexp(logits) - sum_v p_v * logits_v`` so no log of a tiny probability is taken.
    Logits of -inf (tokens removed by top-k/top-p filtering) contribute 0, as ``0 log 0 = 0``.
    Computed in float32 at least (bfloat16 in, float32 out). It materialises one (B, T, V) softmax;
    chunk over T in the caller if that is too much.

    Args:
        logits: (B, T, V), or any (..., V).

    Returns:
        (B, T), or (...,).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (B, T, V) no copy if fp32/fp64
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    finite_logits = logits.masked_fill(torch.isneginf(logits), 0.0)  # (B, T, V) avoids 0 * -inf = nan
    return torch.logsumexp(logits, dim=-1) - (probs * finite_logits).sum(-1)  # (B, T)


# --------------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, Sec. 2.2; OpenRLHF ppo_utils/kl_controller.py)
# --------------------------------------------------------------------------------------------------
class FixedKLController:
    """A constant KL coefficient beta. ``update`` does nothing; the value comes from the config."""

    def __init__(self, kl_coef: float) -> None:
        self._value = float(kl_coef)

    @property
    def value(self) -> float:
        return self._value

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """No-op, so trainers can call ``update`` whichever controller they hold."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self._value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """No-op: a fixed coefficient is a config value, and the config of the resumed run wins."""


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", Sec. 2.2: steer the measured KL towards ``target`` with a clipped proportional
    controller,

        e_t = clip(KL_t / target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    where ``n_steps`` is the number of rollouts (samples) behind ``KL_t``, so ``horizon`` is counted in
    samples; that is how the paper's code (OpenAI ``lm-human-preferences``, default horizon 10000)
    writes K_beta.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got target={target}, horizon={horizon}")
        self._value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    @property
    def value(self) -> float:
        return self._value

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """Adjust beta after a batch whose mean sequence KL was ``current_kl`` over ``n_steps`` samples."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self._value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """The coefficient, a Python float, so ``torch.save``/JSON round-trips restore it bit for bit."""
        return {"value": self._value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the coefficient; target and horizon stay as configured for the resumed run."""
        self._value = float(state["value"])


KLController = FixedKLController | AdaptiveKLController


# --------------------------------------------------------------------------------------------------
# Response masks from generated tokens
# --------------------------------------------------------------------------------------------------
def rule_reward_terms(passed: Sequence[Sequence[bool]], weight: float,
                      rule_weights: Sequence[float] | None = None) -> Tensor:
    """Each rule's share of the rule reward: ``weight * w_j / sum(w) * (+1 if followed else -1)``.

    ``passed[i][j]`` says whether answer i follows rule j; ``rule_weights`` are the rules' relative
    weights (all 1 when None). An answer's rule reward is the row sum, in [-weight, +weight]: each rule
    moves it on its own, so an answer that follows two of three rules already earns more than one that
    follows none (an all-or-nothing reward gives no gradient while no sample follows every rule).

    Returns:
        (B, J) float32 terms; the column means are the per-rule reward curves.
    """
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    rows = [[bool(p) for p in row] for row in passed]
    if any(not row for row in rows):
        raise ValueError("an answer was checked against no rule")
    n = len(rows[0]) if rows else 0
    if any(len(row) != n for row in rows):
        raise ValueError("every answer must be checked against the same rules")
    w = torch.ones(n) if rule_weights is None else torch.tensor([float(x) for x in rule_weights])
    if w.shape != (n,) or (w < 0).any() or (n and w.sum() <= 0):
        raise ValueError(f"expected {n} rule weights >= 0 with a positive sum, got {list(rule_weights or [])}")
    signs = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), n) * 2 - 1  # (B, J) +1 followed, -1 broken
    return weight * signs * (w / w.sum())[None, :]


def rule_rewards(passed: Sequence[Sequence[bool]], weight: float,
                 rule_weights: Sequence[float] | None = None) -> Tensor:
    """Reward from checkable rules, one per answer: the row sums of :func:`rule_reward_terms`; with equal
    weights ``weight * (followed - broken) / n_rules``, in [-weight, +weight]."""
    return rule_reward_terms(passed, weight, rule_weights).sum(dim=1)


def response_mask_from_stop(tokens: Tensor, stop_ids: Sequence[int] | Tensor) -> Tensor:
    """Mask of the response proper: 1 up to and including the first stop token of each row, 0 after.

    A row with no stop token is all 1: it ran to the length limit, and it is the caller's job to
    penalise it (a fixed score for unfinished responses, as in Huang et al. 2024, "The N+ Implementation
    Details of RLHF with PPO"). The mask does not depend on what follows the stop, so it needs no
    pad id; generators that pad (HF ``generate``, a right-padded stack of vLLM outputs) only pad rows
    that stopped, or rows shorter than the longest, which stopped too.

    Args:
        tokens: (B, T) generated token ids, prompt removed.
        stop_ids: token ids that end a response (EOS, end-of-turn); several are allowed.

    Returns:
        (B, T) int64 mask (the dtype of an attention mask, so it concatenates with the prompt's).
    """
    # Naive loop, for reading:
    #   for b: seen = False
    #       for t: mask[b, t] = not seen; seen = seen or tokens[b, t] in stop_ids
    stop = torch.as_tensor(stop_ids, dtype=tokens.dtype, device=tokens.device)  # (S,)
    is_stop = torch.isin(tokens, stop).long()  # (B, T)
    stops_before = is_stop.cumsum(dim=-1) - is_stop  # (B, T) number of stop tokens strictly before t
    return (stops_before == 0).long()  # (B, T)


def truncate_after_stop(tokens: Tensor, stop_ids: Sequence[int] | Tensor, pad_id: int) -> Tensor:
    """``tokens`` with everything after the first stop token of each row replaced by ``pad_id``.

    The stop token itself is kept; rows without one are unchanged. A generator that samples a whole
    batch together may keep sampling for rows that already stopped; this removes that tail before
    the reward model and the policy see the response.

    Args:
        tokens: (B, T) generated token ids, prompt removed.
        stop_ids: token ids that end a response.
        pad_id: the id written over the tail.

    Returns:
        (B, T) token ids, a new tensor.
    """
    mask = response_mask_from_stop(tokens, stop_ids)  # (B, T)
    return tokens.masked_fill(mask == 0, pad_id)
