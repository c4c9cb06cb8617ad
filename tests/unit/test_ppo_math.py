"""Checks of alignment.ppo_math against hand-computed numbers and naive Python loops.

Every expected number is either written out (with math.exp/log where needed) or computed by a
plain loop that follows the paper's definition, not the vectorised code. Tensors are float64 so the
comparisons can be tight. Padding positions are filled with garbage (large numbers or nan) to show
that they do not leak into the results.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from alignment.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    kl_estimate,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    response_mask_from_stop,
    shaped_rewards,
    truncate_after_stop,
    value_loss,
)


def t(rows, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def ragged_mask(lengths: list[int], T: int) -> torch.Tensor:
    """(B, T) right-padded 0/1 mask with the given number of real tokens per row."""
    return torch.tensor([[1] * n + [0] * (T - n) for n in lengths])


# Random batch used by several tests: B=3, T=6, rows of 6, 3 and 1 real tokens.
B, T = 3, 6
MASK = ragged_mask([6, 3, 1], T)


def random_bt(seed: int, garbage: float = 1e4) -> torch.Tensor:
    """(B, T) random values with ``garbage`` at the padding positions of MASK."""
    x = torch.randn(B, T, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x.masked_fill(MASK == 0, garbage)


# --------------------------------------------------------------------------------------------------
# masked_mean / masked_var / masked_whiten
# --------------------------------------------------------------------------------------------------
def test_masked_mean_by_hand():
    x = t([[1.0, 2.0, float("nan")], [4.0, float("inf"), -5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4) / 3)
    assert masked_mean(x, mask, dim=-1).tolist() == pytest.approx([1.5, 4.0])
    assert masked_mean(x, mask.bool()).item() == pytest.approx(7 / 3)  # bool mask, same thing
    assert masked_mean(x, mask.double()).item() == pytest.approx(7 / 3)  # float mask
    # An empty mask gives 0, not nan; so does an empty row with dim.
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    assert masked_mean(x, torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=-1).tolist() == [1.0, 0.0]


def test_masked_var_matches_torch_var_on_selected_values():
    x = random_bt(0)
    selected = x[MASK.bool()]  # the 10 real values
    assert masked_var(x, MASK).item() == pytest.approx(selected.var(unbiased=True).item())
    assert masked_var(x, MASK, unbiased=False).item() == pytest.approx(selected.var(unbiased=False).item())
    # By hand: values 1, 2, 3 -> mean 2, squared deviations 1 + 0 + 1 = 2 -> biased 2/3, unbiased 2/2.
    x = t([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert masked_var(x, mask).item() == pytest.approx(1.0)
    # One value: no spread, 0 rather than a division by zero.
    assert masked_var(x, torch.tensor([[0, 1, 0, 0]])).item() == 0.0


def test_masked_whiten_normalises_over_the_mask_and_ignores_padding():
    x = random_bt(1) * 3.0 + 5.0
    out = masked_whiten(x, MASK)
    real = out[MASK.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert real.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)
    assert (out[MASK == 0] == 0).all()  # padding is 0 in the output
    # What sits at the padding does not matter.
    other = x.masked_fill(MASK == 0, -123.0)
    torch.testing.assert_close(masked_whiten(other, MASK), out)
    # By hand: 1, 2, 3 -> mean 2, unbiased var 1 -> (x - 2) / sqrt(1 + 1e-8).
    by_hand = masked_whiten(t([[1.0, 2.0, 3.0, 99.0]]), torch.tensor([[1, 1, 1, 0]]))
    s = math.sqrt(1 + 1e-8)
    assert by_hand.tolist()[0] == pytest.approx([-1 / s, 0.0, 1 / s, 0.0])


def test_masked_whiten_without_shifting_keeps_the_mean():
    x = random_bt(2) * 3.0 + 5.0
    out = masked_whiten(x, MASK, shift_mean=False)
    real_in, real_out = x[MASK.bool()], out[MASK.bool()]
    assert real_out.mean().item() == pytest.approx(real_in.mean().item())
    assert real_out.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)
    # By hand: 1, 2, 3 -> (x - 2) / 1 + 2 = x (up to the 1e-8).
    by_hand = masked_whiten(t([[1.0, 2.0, 3.0, 99.0]]), torch.tensor([[1, 1, 1, 0]]), shift_mean=False)
    assert by_hand.tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0])


# --------------------------------------------------------------------------------------------------
# kl_estimate
# --------------------------------------------------------------------------------------------------
def test_kl_estimates_by_hand():
    # Token 1: logp -1.0, ref -1.5 -> log p - log q = 0.5, r = q/p = exp(-0.5).
    # Token 2: logp -2.0, ref -1.0 -> log p - log q = -1.0, r = exp(1.0).
    logp, ref = t([[-1.0, -2.0]]), t([[-1.5, -1.0]])
    assert kl_estimate(logp, ref, "k1").tolist()[0] == pytest.approx([0.5, -1.0])
    k3 = [(math.exp(-0.5) - 1) - (-0.5), (math.exp(1.0) - 1) - 1.0]
    assert kl_estimate(logp, ref, "k3").tolist()[0] == pytest.approx(k3)
    assert kl_estimate(logp, logp, "k3").tolist()[0] == [0.0, 0.0]  # same model: 0
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(logp, ref, "k2")  # type: ignore[arg-type]


def test_k3_is_never_negative():
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(64, 50, generator=g, dtype=torch.float64) * 10
    ref = -torch.rand(64, 50, generator=g, dtype=torch.float64) * 10
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k1") < 0).any()  # k1 per token can be negative; k3 cannot


# --------------------------------------------------------------------------------------------------
# shaped_rewards
# --------------------------------------------------------------------------------------------------
def naive_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kind):
    rewards = torch.zeros_like(logprobs)
    for b in range(logprobs.shape[0]):
        last = None
        for pos in range(logprobs.shape[1]):
            if not mask[b, pos]:
                continue
            log_ratio = logprobs[b, pos].item() - ref_logprobs[b, pos].item()
            kl = log_ratio if kind == "k1" else math.exp(-log_ratio) - 1 + log_ratio
            rewards[b, pos] = -kl_coef * kl
            last = pos
        rewards[b, last] += scores[b]
    return rewards


def test_shaped_rewards_by_hand():
    # Row 0 has 2 real tokens (the third is padding, nan log-prob); row 1 has 3.
    logp = t([[-1.0, -2.0, float("nan")], [-1.0, -0.5, -3.0]])
    ref = t([[-1.5, -2.0, 0.0], [-1.0, -1.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    scores = t([1.0, -2.0])
    rewards, kl = shaped_rewards(scores, logp, ref, mask, kl_coef=0.1, kind="k1")
    # k1 = logp - ref: row 0 [0.5, 0.0, (pad) 0], row 1 [0.0, 0.5, -1.0].
    torch.testing.assert_close(kl, t([[0.5, 0.0, 0.0], [0.0, 0.5, -1.0]]))
    # -0.1 * kl everywhere, plus the score on the last real token (row 0: position 1, row 1: position 2).
    torch.testing.assert_close(rewards, t([[-0.05, 0.0 + 1.0, 0.0], [0.0, -0.05, 0.1 - 2.0]]))

    rewards3, kl3 = shaped_rewards(scores, logp, ref, mask, kl_coef=0.1, kind="k3")
    k3_first = math.exp(-0.5) - 1 + 0.5  # logp -1.0, ref -1.5
    k3_mid = math.exp(-0.5) - 1 + 0.5  # logp -0.5, ref -1.0
    k3_last = math.exp(1.0) - 1 - 1.0  # logp -3.0, ref -2.0
    torch.testing.assert_close(kl3, t([[k3_first, 0.0, 0.0], [0.0, k3_mid, k3_last]]))
    torch.testing.assert_close(rewards3, t([[-0.1 * k3_first, 1.0, 0.0], [0.0, -0.1 * k3_mid, -0.1 * k3_last - 2.0]]))


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_shaped_rewards_match_naive_loop(kind):
    logp, ref = random_bt(4, garbage=float("nan")), random_bt(5)
    scores = t([0.7, -1.3, 2.5])
    rewards, kl = shaped_rewards(scores, logp, ref, MASK, kl_coef=0.05, kind=kind)
    expected = naive_shaped_rewards(scores, logp, ref, MASK, 0.05, kind)
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(rewards.sum(-1), scores - 0.05 * kl.sum(-1))  # one score per row, nothing more
    # The score lands exactly at positions 5, 2 and 0 (the last real tokens): with no KL there is
    # nothing else in the tensor.
    rewards0, _ = shaped_rewards(scores, logp, logp.nan_to_num(), MASK, kl_coef=0.0, kind=kind)
    assert rewards0.nonzero().tolist() == [[0, 5], [1, 2], [2, 0]]
    assert rewards0[rewards0 != 0].tolist() == pytest.approx([0.7, -1.3, 2.5])
    # A tensor coefficient (a KL controller's value as a tensor) works the same.
    rewards_t, _ = shaped_rewards(scores, logp, ref, MASK, kl_coef=torch.tensor(0.05, dtype=torch.float64), kind=kind)
    torch.testing.assert_close(rewards_t, expected)


def test_shaped_rewards_row_without_response_gets_no_score():
    logp = ref = t([[-1.0, -1.0], [-1.0, -1.0]])
    rewards, _ = shaped_rewards(t([3.0, 4.0]), logp, ref, torch.tensor([[1, 0], [0, 0]]), kl_coef=0.1)
    assert rewards.tolist() == [[3.0, 0.0], [0.0, 0.0]]


# --------------------------------------------------------------------------------------------------
# gae
# --------------------------------------------------------------------------------------------------
def naive_gae(rewards, values, mask, gamma, lam):
    """The paper's definition, one position at a time: A_t = sum_l (gamma * lam)^l * delta_{t+l} over the
    row's real tokens, with delta_k = r_k + gamma * V_{k+1} - V_k and V = 0 after the last real token."""
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        real = [pos for pos in range(rewards.shape[1]) if mask[b, pos]]
        for i, pos in enumerate(real):
            total = 0.0
            for j, k in enumerate(real[i:]):
                next_value = values[b, k + 1].item() if k != real[-1] else 0.0
                delta = rewards[b, k].item() + gamma * next_value - values[b, k].item()
                total += (gamma * lam) ** j * delta
            advantages[b, pos] = total
    returns = torch.where(mask.bool(), advantages + values, torch.zeros_like(values))
    return advantages, returns


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 0.5), (1.0, 1.0), (0.95, 1.0), (0.99, 0.0)])
def test_gae_matches_naive_loop(gamma, lam):
    rewards, values = random_bt(6), random_bt(7, garbage=float("nan"))
    advantages, returns = gae(rewards, values, MASK, gamma, lam)
    expected_adv, expected_ret = naive_gae(rewards, values, MASK, gamma, lam)
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)
    assert (advantages[MASK == 0] == 0).all() and (returns[MASK == 0] == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_gae_with_lambda_one_is_discounted_return_minus_value(gamma):
    rewards, values = random_bt(8), random_bt(9)
    advantages, returns = gae(rewards, values, MASK, gamma, lam=1.0)
    for b, n in enumerate([6, 3, 1]):
        for pos in range(n):
            discounted_return = sum(gamma ** (k - pos) * rewards[b, k].item() for k in range(pos, n))
            assert advantages[b, pos].item() == pytest.approx(discounted_return - values[b, pos].item())
            assert returns[b, pos].item() == pytest.approx(discounted_return)


def test_gae_with_lambda_zero_is_the_td_error():
    # One row of 3 tokens, by hand: delta_t = r_t + gamma * V_{t+1} - V_t, V_3 = 0.
    rewards, values = t([[0.0, 0.0, 1.0, 9.0]]), t([[0.5, 0.2, 0.4, 9.0]])
    advantages, _ = gae(rewards, values, torch.tensor([[1, 1, 1, 0]]), gamma=0.9, lam=0.0)
    assert advantages.tolist()[0] == pytest.approx([0.9 * 0.2 - 0.5, 0.9 * 0.4 - 0.2, 1.0 - 0.4, 0.0])


def test_gae_single_token_response():
    # The whole episode is one token: A = r - V, the return is r, whatever gamma and lambda are.
    rewards, values = t([[2.0, 5.0, 5.0]]), t([[0.5, 7.0, 7.0]])
    for gamma, lam in [(1.0, 1.0), (0.9, 0.95), (0.5, 0.0)]:
        advantages, returns = gae(rewards, values, torch.tensor([[1, 0, 0]]), gamma, lam)
        assert advantages.tolist() == [[1.5, 0.0, 0.0]]
        assert returns.tolist() == [[2.0, 0.0, 0.0]]


def test_gae_left_padded_rows():
    # Real tokens at the end of the row (left padding) are one episode too.
    rewards, values = random_bt(10), random_bt(11)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]])
    advantages, returns = gae(rewards, values, mask, 0.99, 0.95)
    expected_adv, expected_ret = naive_gae(rewards, values, mask, 0.99, 0.95)
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)


# --------------------------------------------------------------------------------------------------
# policy_loss
# --------------------------------------------------------------------------------------------------
# Five tokens with eps = 0.2 (clip to [0.8, 1.2]) and a padding token:
#   A = +1, ratio 1.1: -1.1  vs -1.1        -> -1.1  inside the range, not clipped
#   A = +2, ratio 1.5: -3.0  vs -2.0 * 1.2  -> -2.4  clipped (gradient 0)
#   A = -1, ratio 0.5:  0.5  vs  0.8        ->  0.8  clipped (gradient 0)
#   A = -1, ratio 1.5:  1.5  vs  1.2        ->  1.5  not clipped: the pessimistic bound keeps the gradient
#   A = +1, ratio 0.5: -0.5  vs -0.8        -> -0.5  not clipped
# loss = (-1.1 - 2.4 + 0.8 + 1.5 - 0.5) / 5 = -0.34, clipfrac = 2/5.
RATIOS = [1.1, 1.5, 0.5, 1.5, 0.5]
ADVANTAGES = [1.0, 2.0, -1.0, -1.0, 1.0]


def policy_inputs():
    old = t([[-1.0, -2.0, -0.5, -1.5, -3.0, 0.0]])
    logp = t([[o + math.log(r) for o, r in zip(old[0, :5].tolist(), RATIOS)] + [40.0]], grad=True)
    advantages = t([ADVANTAGES + [1e4]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    return logp, old, advantages, mask


def test_policy_loss_by_hand():
    logp, old, advantages, mask = policy_inputs()
    loss, stats = policy_loss(logp, old, advantages, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-0.34)
    assert stats["policy/clipfrac"].item() == pytest.approx(2 / 5)
    assert stats["policy/ratio"].item() == pytest.approx(sum(RATIOS) / 5)
    assert stats["policy/approxkl"].item() == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in RATIOS) / 5)
    assert all(not v.requires_grad for v in stats.values())


def test_policy_loss_gradient_is_zero_where_clipped():
    logp, old, advantages, mask = policy_inputs()
    loss, _ = policy_loss(logp, old, advantages, mask, clip_range=0.2)
    loss.backward()
    # d/dlogp of -A * exp(logp - old) is -A * ratio, divided by the 5 real tokens.
    expected = [-1.0 * 1.1 / 5, 0.0, 0.0, 1.0 * 1.5 / 5, -1.0 * 0.5 / 5, 0.0]
    assert logp.grad.tolist()[0] == pytest.approx(expected)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    # First PPO epoch: logprobs == old, nothing is clipped, the loss is -mean(A).
    old = t([[-1.0, -2.0, -3.0]])
    loss, stats = policy_loss(old.clone(), old, t([[1.0, -3.0, 5.0]]), torch.ones(1, 3), clip_range=0.2)
    assert loss.item() == pytest.approx(-1.0)
    assert stats["policy/clipfrac"].item() == 0.0
    assert stats["policy/approxkl"].item() == 0.0
    assert stats["policy/ratio"].item() == 1.0


# --------------------------------------------------------------------------------------------------
# value_loss
# --------------------------------------------------------------------------------------------------
# Four tokens with eps_v = 0.2 and a padding token:
#   old 1.0, V 1.1, R 2.0:  clip(0.1) -> 1.1;   errors 0.81 vs 0.81 -> 0.81  not clipped
#   old 1.0, V 1.5, R 2.0:  clip(0.5) -> 1.2;   errors 0.25 vs 0.64 -> 0.64  clipped (gradient 0)
#   old 1.0, V 1.5, R 0.0:  clip(0.5) -> 1.2;   errors 2.25 vs 1.44 -> 2.25  not clipped
#   old 0.0, V -0.5, R -1.0: clip(-0.5) -> -0.2; errors 0.25 vs 0.64 -> 0.64 clipped (gradient 0)
# loss = 0.5 * (0.81 + 0.64 + 2.25 + 0.64) / 4 = 0.5425, clipfrac 1/2,
# mean V = (1.1 + 1.5 + 1.5 - 0.5) / 4 = 0.9, error = (0.81 + 0.25 + 2.25 + 0.25) / 4 = 0.89.
def test_value_loss_by_hand():
    values = t([[1.1, 1.5, 1.5, -0.5, 50.0]], grad=True)
    old = t([[1.0, 1.0, 1.0, 0.0, 0.0]])
    returns = t([[2.0, 2.0, 0.0, -1.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5425)
    assert stats["value/clipfrac"].item() == pytest.approx(0.5)
    assert stats["value/mean"].item() == pytest.approx(0.9)
    assert stats["value/error"].item() == pytest.approx(0.89)
    loss.backward()
    # d/dV of 0.5 * (V - R)^2 / 4 is (V - R) / 4 where the unclipped error wins, 0 where clipped or padding.
    assert values.grad.tolist()[0] == pytest.approx([(1.1 - 2.0) / 4, 0.0, (1.5 - 0.0) / 4, 0.0, 0.0])


def test_value_loss_without_active_clipping_is_half_mse():
    values, returns = t([[0.1, -0.2, 0.3]]), t([[1.0, 1.0, -1.0]])
    loss, stats = value_loss(values, values.clone(), returns, torch.ones(1, 3), clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.81 + 1.44 + 1.69) / 3)
    assert stats["value/clipfrac"].item() == 0.0


# --------------------------------------------------------------------------------------------------
# entropy_from_logits
# --------------------------------------------------------------------------------------------------
def test_entropy_matches_minus_sum_p_log_p():
    logits = torch.randn(2, 3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(12)) * 3
    p = torch.softmax(logits, dim=-1)
    expected = -(p * torch.log(p)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), expected)


def test_entropy_edge_cases():
    # Uniform over 4 tokens: log 4. Two tokens left after filtering (-inf): log 2. One dominant logit: ~0.
    inf = float("inf")
    logits = t([[[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, -inf, -inf], [1000.0, 0.0, 0.0, 0.0]]]).requires_grad_()
    entropy = entropy_from_logits(logits)
    assert entropy.tolist()[0] == pytest.approx([math.log(4), math.log(2), 0.0], abs=1e-12)
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # bfloat16 in, float32 out, close to the float64 value.
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(13))
    out = entropy_from_logits(logits.bfloat16())
    assert out.dtype == torch.float32 and out.shape == (2, 5)
    torch.testing.assert_close(out, entropy_from_logits(logits.bfloat16().double()).float())


# --------------------------------------------------------------------------------------------------
# KL controllers
# --------------------------------------------------------------------------------------------------
def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    assert ctl.value == 0.2
    # KL 12: error 12/6 - 1 = 1, clipped to 0.2 -> beta = 0.2 * (1 + 0.2 * 256 / 10000) = 0.201024.
    ctl.update(12.0, n_steps=256)
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    assert ctl.value == pytest.approx(0.201024)
    # KL 5: error 5/6 - 1 = -1/6, inside the clip -> beta *= 1 - (1/6) * 256 / 10000.
    ctl.update(torch.tensor(5.0), n_steps=256)
    assert ctl.value == pytest.approx(0.201024 * (1 - (1 / 6) * 256 / 10000))
    # KL 1: error -5/6 clipped to -0.2.
    before = ctl.value
    ctl.update(1.0, n_steps=512)
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 512 / 10000))
    # KL on target: no change.
    before = ctl.value
    ctl.update(6.0, n_steps=512)
    assert ctl.value == before


def test_adaptive_kl_controller_resume_restores_the_coefficient_exactly():
    kls = [12.0, 5.0, 7.3, 0.4, 6.1, 9.9]
    uninterrupted = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    for kl in kls:
        uninterrupted.update(kl, n_steps=64)

    first = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    for kl in kls[:3]:
        first.update(kl, n_steps=64)
    # Through torch.save (a trainer checkpoint) and JSON (a trainer_state.json).
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    via_torch = torch.load(buffer)
    via_json = json.loads(json.dumps(first.state_dict()))
    for state in (via_torch, via_json):
        resumed = AdaptiveKLController(0.1, target=6.0, horizon=10000)
        resumed.load_state_dict(state)
        assert resumed.value == first.value  # bit for bit
        for kl in kls[3:]:
            resumed.update(kl, n_steps=64)
        assert resumed.value == uninterrupted.value


def test_fixed_kl_controller_stays_fixed():
    ctl = FixedKLController(0.05)
    for kl in [100.0, 0.0, -3.0]:
        ctl.update(kl, n_steps=256)
    assert ctl.value == 0.05
    assert ctl.state_dict() == {"value": 0.05}
    ctl.load_state_dict({"value": 0.3})  # the config's value wins on resume
    assert ctl.value == 0.05


def test_adaptive_kl_controller_rejects_bad_settings():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10000)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target=6.0, horizon=0)


# --------------------------------------------------------------------------------------------------
# response_mask_from_stop / truncate_after_stop
# --------------------------------------------------------------------------------------------------
# Stop ids 2 (EOS) and 3 (end of turn), pad 0. Tokens after the first stop are sampling noise.
TOKENS = torch.tensor([
    [5, 6, 2, 7, 8],  # stop in the middle
    [2, 5, 6, 2, 7],  # stop at the first token (and again later)
    [5, 6, 7, 8, 9],  # never stops
    [5, 3, 6, 2, 7],  # the other stop id comes first
    [5, 6, 7, 8, 2],  # stop at the last token
])
EXPECTED_MASK = [
    [1, 1, 1, 0, 0],
    [1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1],
    [1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1],
]
EXPECTED_TRUNCATED = [
    [5, 6, 2, 0, 0],
    [2, 0, 0, 0, 0],
    [5, 6, 7, 8, 9],
    [5, 3, 0, 0, 0],
    [5, 6, 7, 8, 2],
]


def test_response_mask_from_stop_by_hand():
    mask = response_mask_from_stop(TOKENS, [2, 3])
    assert mask.dtype == torch.int64
    assert mask.tolist() == EXPECTED_MASK
    assert response_mask_from_stop(TOKENS, torch.tensor([2, 3])).tolist() == EXPECTED_MASK  # tensor of ids
    assert response_mask_from_stop(TOKENS.int(), (2, 3)).tolist() == EXPECTED_MASK  # int32 tokens
    # With only id 2 as a stop, row 3 ends at its 2 (position 3) instead.
    assert response_mask_from_stop(TOKENS, [2]).tolist()[3] == [1, 1, 1, 1, 0]
    # No stop ids at all: everything is response.
    assert response_mask_from_stop(TOKENS, []).tolist() == [[1] * 5] * 5


def test_response_mask_when_pad_is_the_stop_token():
    # HF generate pads finished rows with pad_token_id, often the EOS itself: only the first one counts.
    tokens = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 2]])
    assert response_mask_from_stop(tokens, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert truncate_after_stop(tokens, [2], pad_id=2).tolist() == tokens.tolist()


def test_truncate_after_stop_by_hand():
    out = truncate_after_stop(TOKENS, [2, 3], pad_id=0)
    assert out.tolist() == EXPECTED_TRUNCATED
    assert TOKENS[0, 3] == 7  # the input is not modified


def test_rule_rewards_by_hand():
    from alignment.ppo_math import rule_rewards

    r = rule_rewards([[True, True, False], [False, False, False], [True, True, True]], 1.5)
    # (followed - broken) / rules * weight: (2-1)/3*1.5, (0-3)/3*1.5, 3/3*1.5
    assert torch.allclose(r, torch.tensor([0.5, -1.5, 1.5]))
    assert torch.allclose(rule_rewards([[True, False]], 1.5), torch.tensor([0.0]))  # (1-1)/2*1.5
    assert rule_rewards([[True]], 0.0).tolist() == [0.0]
    with pytest.raises(ValueError, match="weight"):
        rule_rewards([[True]], -1.0)
    with pytest.raises(ValueError, match="no rule"):
        rule_rewards([[]], 1.0)


# --------------------------------------------------------------------------------------------------
# Critic-free estimators: group advantages, REINFORCE++ returns, loss aggregation, clip-higher
# --------------------------------------------------------------------------------------------------
# Two prompts, three answers each: scores (1, 2, 6) and (4, 4, 4).
# Group 1: mean 3, unbiased std sqrt(((1-3)^2 + (2-3)^2 + (6-3)^2) / 2) = sqrt(7).
#   grpo    (-2, -1, 3) / sqrt(7)
#   dr_grpo (-2, -1, 3)
#   rloo    1 - (2+6)/2 = -3,  2 - (1+6)/2 = -1.5,  6 - (1+2)/2 = 4.5
# Group 2: every answer scored the same: 0 for all three, whatever the estimator.
GROUP_SCORES = [1.0, 2.0, 6.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize("kind, expected", [
    ("grpo", [-2 / math.sqrt(7), -1 / math.sqrt(7), 3 / math.sqrt(7), 0.0, 0.0, 0.0]),
    ("dr_grpo", [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0]),
    ("rloo", [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]),
])
def test_group_advantages_by_hand(kind, expected):
    from alignment.ppo_math import group_advantages

    out = group_advantages(t(GROUP_SCORES), 3, kind, eps=0.0 if kind != "grpo" else 1e-12)
    assert out.tolist() == pytest.approx(expected, abs=1e-9)


def test_rloo_matches_a_leave_one_out_loop():
    from alignment.ppo_math import group_advantages

    scores = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    k = 4
    expected = []
    for i in range(12):
        group = range(i // k * k, i // k * k + k)
        expected.append(float(scores[i]) - sum(float(scores[j]) for j in group if j != i) / (k - 1))
    assert group_advantages(scores, k, "rloo").tolist() == pytest.approx(expected)


def test_informative_groups_by_hand():
    from alignment.ppo_math import informative_groups

    # groups of 3: [1, 1, 1] all equal; [0, 1, 0] differ; [2, 2, 2 + 1e-9] equal within tol; [-1, 0.5, -1] differ
    scores = t([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0 + 1e-9, -1.0, 0.5, -1.0])
    assert informative_groups(scores, 3).tolist() == [False, True, False, True]
    assert informative_groups(t([0.0, 0.0]), 1).tolist() == [False, False]  # one answer compares with nothing
    with pytest.raises(ValueError, match="multiple of 3"):
        informative_groups(t([1.0, 2.0]), 3)


def test_group_advantages_refuse_bad_groups():
    from alignment.ppo_math import group_advantages

    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(t([1.0, 2.0]), 1, "rloo")
    with pytest.raises(ValueError, match="multiple of 2"):
        group_advantages(t([1.0, 2.0, 3.0]), 2, "grpo")
    with pytest.raises(ValueError, match="unknown"):
        group_advantages(t([1.0, 2.0]), 2, "ppo")


def test_group_mean_baseline_by_hand():
    from alignment.ppo_math import group_mean_baseline

    assert group_mean_baseline(t(GROUP_SCORES), 3).tolist() == pytest.approx([-2, -1, 3, 0, 0, 0])
    assert group_mean_baseline(t([1.0, 5.0]), 1).tolist() == [1.0, 5.0]


def test_returns_to_go_by_hand():
    from alignment.ppo_math import returns_to_go

    rewards = t([[-0.1, -0.2, 1.0, 9e9], [0.5, 7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # row 1: 0.7, 0.8, 1.0 (suffix sums); row 2: 0.5; padding 0 whatever the rewards hold there
    assert returns_to_go(rewards, mask).flatten().tolist() == pytest.approx([0.7, 0.8, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0])


# Per-token losses of two answers: (1, 2, 3) and (10), padding 1e4; norm 4.
#   token_mean              (1 + 2 + 3 + 10) / 4 = 4
#   seq_mean_token_mean     ((1 + 2 + 3) / 3 + 10 / 1) / 2 = 6
#   seq_mean_token_sum_norm ((1 + 2 + 3) / 4 + 10 / 4) / 2 = 2
@pytest.mark.parametrize("aggregation, expected", [
    ("token_mean", 4.0), ("seq_mean_token_mean", 6.0), ("seq_mean_token_sum_norm", 2.0)])
def test_aggregate_loss_by_hand(aggregation, expected):
    from alignment.ppo_math import aggregate_loss

    loss = t([[1.0, 2.0, 3.0], [10.0, 1e4, 1e4]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(loss, mask, aggregation, norm=4).item() == pytest.approx(expected)


def test_aggregate_loss_sum_norm_needs_a_norm():
    from alignment.ppo_math import aggregate_loss

    with pytest.raises(ValueError, match="norm"):
        aggregate_loss(t([[1.0]]), torch.ones(1, 1), "seq_mean_token_sum_norm")


def test_clip_higher_lets_a_rewarded_token_grow_further():
    # One token, advantage +1, ratio 1.25: clipped at 1.2 by a symmetric 0.2, not by an upper 0.28.
    old = t([[math.log(0.4)]])
    logp = t([[math.log(0.5)]], grad=True)
    loss, stats = policy_loss(logp, old, t([[1.0]]), torch.ones(1, 1), clip_range=0.2)
    assert loss.item() == pytest.approx(-1.2) and stats["policy/clipfrac"].item() == 1.0
    high, stats = policy_loss(logp, old, t([[1.0]]), torch.ones(1, 1), clip_range=0.2, clip_range_high=0.28)
    assert high.item() == pytest.approx(-1.25) and stats["policy/clipfrac"].item() == 0.0
    high.backward()
    assert logp.grad.item() == pytest.approx(-1.25)  # gradient still flows: -A * ratio
    # the lower clip is unchanged: ratio 0.5 with a negative advantage is clipped at 0.8 either way
    low, _ = policy_loss(t([[math.log(0.2)]]), old, t([[-1.0]]), torch.ones(1, 1), 0.2, clip_range_high=0.28)
    assert low.item() == pytest.approx(0.8)


def test_rule_reward_terms_with_weights_by_hand():
    from alignment.ppo_math import rule_reward_terms, rule_rewards

    # weights 2, 1, 1 (shares 0.5, 0.25, 0.25), overall weight 2:
    #   answer 1 follows rules 1 and 3: +1.0, -0.5, +0.5 -> 1.0
    #   answer 2 follows only rule 2:   -1.0, +0.5, -0.5 -> -1.0
    passed = [[True, False, True], [False, True, False]]
    terms = rule_reward_terms(passed, 2.0, [2.0, 1.0, 1.0])
    assert terms.tolist() == [[1.0, -0.5, 0.5], [-1.0, 0.5, -0.5]]
    assert rule_rewards(passed, 2.0, [2.0, 1.0, 1.0]).tolist() == [1.0, -1.0]
    # a weight of 0 takes a rule out of the reward
    assert rule_rewards(passed, 1.0, [1.0, 0.0, 1.0]).tolist() == [1.0, -1.0]
    for bad in ([1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0]):
        with pytest.raises(ValueError, match="rule weights"):
            rule_reward_terms(passed, 1.0, bad)
    with pytest.raises(ValueError, match="same rules"):
        rule_reward_terms([[True], [True, False]], 1.0)
