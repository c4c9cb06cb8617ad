"""Hand-computed checks of alignment.losses: every expected number is written out with math.log/exp.

Shared inputs (one pair unless said otherwise), chosen for easy arithmetic:
    policy logps  chosen -1.0, rejected -2.0
    ref logps     chosen -1.5, rejected -1.5
    -> chosen log-ratio +0.5, rejected log-ratio -0.5, h = 1.0
A second pair (policy -3.0 / -1.0, ref -2.0 / -2.0) has log-ratios -1.0 / +1.0, h = -2.0.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from alignment.losses import (
    PREFERENCE_LOSSES,
    DPOLoss,
    DPOOutput,
    IPOLoss,
    SimPOLoss,
    bradley_terry_loss,
    preference_metrics,
    reward_model_metrics,
    sequence_logps,
)


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), written out."""
    return math.log(1 + math.exp(x))


# One pair, and the two-pair batch.
PC, PR, RC, RR = t(-1.0), t(-2.0), t(-1.5), t(-1.5)
PC2, PR2, RC2, RR2 = t(-1.0, -3.0), t(-2.0, -1.0), t(-1.5, -2.0), t(-1.5, -2.0)


# --------------------------------------------------------------------------------------------------
# sequence_logps
# --------------------------------------------------------------------------------------------------
def naive_sequence_logps(logits, labels, ignore_index=-100, temperature=1.0):
    """One position at a time: log_softmax of that position's logits, pick the label."""
    logps, counts = [], []
    for b in range(logits.shape[0]):
        total, n = 0.0, 0
        for pos in range(logits.shape[1]):
            label = int(labels[b, pos])
            if label == ignore_index:
                continue
            total += torch.log_softmax(logits[b, pos] / temperature, dim=-1)[label].item()
            n += 1
        logps.append(total)
        counts.append(n)
    return logps, counts


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_sequence_logps_matches_naive_loop(temperature):
    g = torch.Generator().manual_seed(0)
    B, T, V = 4, 6, 11
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = -100  # a prompt
    labels[1, -3:] = -100  # padding
    labels[2, ::2] = -100  # scattered
    labels[3, :] = -100  # nothing scored
    logps, counts = sequence_logps(logits, labels, temperature=temperature)
    want_logps, want_counts = naive_sequence_logps(logits, labels, temperature=temperature)
    assert logps.shape == (B,) and counts.shape == (B,)
    assert logps.tolist() == pytest.approx(want_logps, abs=1e-10)
    assert counts.tolist() == want_counts == [4, 3, 3, 0]
    assert logps[3].item() == 0.0


def test_sequence_logps_by_hand():
    # Position 0: logits (2, 0), label 0, temperature 2 -> log(e^1 / (e^1 + e^0)) = 1 - log(e + 1).
    # Position 1: logits (0, 0), label 1 -> log(1/2). Position 2 is ignored.
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[0, 1, -100]])
    logps, counts = sequence_logps(logits, labels, temperature=2.0)
    assert logps.item() == pytest.approx(1 - math.log(math.e + 1) + math.log(0.5), abs=1e-6)
    assert counts.item() == 2


def test_sequence_logps_custom_ignore_index_and_gradients():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[:, 0] = 3  # ignore_index=3 below: every label-3 position is skipped, column 0 included
    logps, counts = sequence_logps(logits, labels, ignore_index=3)
    assert counts.tolist() == (labels != 3).sum(-1).tolist()
    logps.sum().backward()
    assert torch.all(logits.grad[labels == 3] == 0)  # ignored positions get no gradient
    # Scored positions: d log_softmax(x)[y] / dx = onehot(y) - softmax(x).
    scored = labels != 3
    want = F.one_hot(labels, 7).double() - torch.softmax(logits.detach(), -1)
    assert torch.allclose(logits.grad[scored], want[scored])


def test_sequence_logps_bf16_is_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 8, 50, generator=g) * 10 + 20).to(torch.bfloat16)  # large logits, as from an LM head
    labels = torch.randint(0, 50, (2, 8), generator=g)
    logps, _ = sequence_logps(logits, labels)
    want, _ = naive_sequence_logps(logits.double(), labels)  # same bf16 values, exact arithmetic
    assert logps.dtype == torch.float32
    assert logps.tolist() == pytest.approx(want, abs=1e-4)


def test_sequence_logps_rejects_bad_input():
    with pytest.raises(ValueError, match="expected logits"):
        sequence_logps(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        sequence_logps(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)


# --------------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------------
def test_bradley_terry_by_hand():
    # r_c - r_r = 1.0 -> -log sigmoid(1) = log(1 + e^-1); and -1.0 -> log(1 + e^1).
    loss = bradley_terry_loss(t(2.0, 0.5), t(1.0, 1.5))
    assert loss.item() == pytest.approx((softplus(-1.0) + softplus(1.0)) / 2)


def test_bradley_terry_with_margin_and_centering_by_hand():
    # diff - margin = (2 - 1 - 0.5, 0.5 - 1.5 - 0) = (0.5, -1.0)
    # centering: mean((2 + 1)^2, (0.5 + 1.5)^2) = (9 + 4) / 2 = 6.5, times 0.01
    loss = bradley_terry_loss(t(2.0, 0.5), t(1.0, 1.5), margin=t(0.5, 0.0), center_coef=0.01)
    assert loss.item() == pytest.approx((softplus(-0.5) + softplus(1.0)) / 2 + 0.01 * 6.5)


def test_bradley_terry_gradient_signs():
    chosen, rejected = t(0.3, -0.2, grad=True), t(0.1, 0.4, grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    assert torch.all(chosen.grad < 0) and torch.all(rejected.grad > 0)
    # By hand for pair 0: d/dr_c mean(-log sigmoid(r_c - r_r)) = -sigmoid(-(0.2)) / 2
    assert chosen.grad[0].item() == pytest.approx(-1 / (1 + math.exp(0.2)) / 2)


def test_bradley_terry_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2))


def test_reward_model_metrics_by_hand():
    m = reward_model_metrics(t(2.0, 0.5, 1.0), t(1.0, 1.5, 0.0))
    assert m["rewards/chosen"] == pytest.approx(3.5 / 3)
    assert m["rewards/rejected"] == pytest.approx(2.5 / 3)
    assert m["rewards/margins"] == pytest.approx((1.0 - 1.0 + 1.0) / 3)
    assert m["rewards/accuracies"] == pytest.approx(2 / 3)
    assert set(m) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}


def test_reward_model_metrics_tie_counts_as_wrong():
    assert reward_model_metrics(t(1.0, 2.0), t(1.0, 1.0))["rewards/accuracies"] == 0.5


# --------------------------------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------------------------------
def test_dpo_by_hand():
    out = DPOLoss(beta=0.1)(PC, PR, RC, RR)
    # beta * h = 0.1 * 1.0 -> -log sigmoid(0.1) = log(1 + e^-0.1)
    assert out.loss.item() == pytest.approx(softplus(-0.1))
    assert out.losses.shape == (1,)
    assert out.chosen_rewards.item() == pytest.approx(0.1 * 0.5)
    assert out.rejected_rewards.item() == pytest.approx(0.1 * -0.5)


def test_dpo_batch_mean_by_hand():
    out = DPOLoss(beta=0.1)(PC2, PR2, RC2, RR2)
    # pair 2: beta * h = 0.1 * -2.0 -> log(1 + e^0.2)
    assert out.losses.tolist() == pytest.approx([softplus(-0.1), softplus(0.2)])
    assert out.loss.item() == pytest.approx((softplus(-0.1) + softplus(0.2)) / 2)
    assert out.chosen_rewards.tolist() == pytest.approx([0.05, -0.1])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.05, 0.1])


def test_dpo_label_smoothing_by_hand():
    out = DPOLoss(beta=0.1, label_smoothing=0.1)(PC, PR, RC, RR)
    # -(0.9) log sigmoid(0.1) - 0.1 log sigmoid(-0.1)
    assert out.loss.item() == pytest.approx(0.9 * softplus(-0.1) + 0.1 * softplus(0.1))
    assert out.loss.item() != pytest.approx(DPOLoss(beta=0.1)(PC, PR, RC, RR).loss.item())


def test_dpo_gradient_signs_and_value():
    pc, pr = t(-1.0, grad=True), t(-2.0, grad=True)
    DPOLoss(beta=0.1)(pc, pr, RC, RR).loss.backward()
    assert pc.grad.item() < 0  # raising the chosen log-prob lowers the loss
    assert pr.grad.item() > 0  # raising the rejected log-prob raises it
    # dL/dlogp_c = -beta * sigmoid(-beta * h) = -0.1 / (1 + e^0.1)
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.1)))
    assert pr.grad.item() == pytest.approx(0.1 / (1 + math.exp(0.1)))


def test_dpo_rewards_are_detached():
    out = DPOLoss()(t(-1.0, grad=True), t(-2.0, grad=True), RC, RR)
    assert out.loss.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpo_needs_reference():
    with pytest.raises(ValueError, match="needs reference"):
        DPOLoss()(PC, PR, None, None)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"beta": -1.0}, {"label_smoothing": 0.5}, {"label_smoothing": -0.1}])
def test_dpo_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        DPOLoss(**kwargs)


# --------------------------------------------------------------------------------------------------
# IPO
# --------------------------------------------------------------------------------------------------
def test_ipo_by_hand():
    # Inputs read as length-averaged log-probs. Target 1 / (2 * 0.1) = 5.
    # pair 1: h = 1.0 -> (1 - 5)^2 = 16; pair 2: h = -2.0 -> (-2 - 5)^2 = 49.
    out = IPOLoss(beta=0.1)(PC2, PR2, RC2, RR2)
    assert out.losses.tolist() == pytest.approx([16.0, 49.0])
    assert out.loss.item() == pytest.approx(32.5)
    assert out.chosen_rewards.tolist() == pytest.approx([0.05, -0.1])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.05, 0.1])


def test_ipo_gradient_signs_and_minimum():
    pc, pr = t(-1.0, grad=True), t(-2.0, grad=True)
    IPOLoss(beta=0.1)(pc, pr, RC, RR).loss.backward()
    # h = 1 is below the target 5: dL/dlogp_c = 2 (h - 5) = -8
    assert pc.grad.item() == pytest.approx(-8.0)
    assert pr.grad.item() == pytest.approx(8.0)
    # At h = 1 / (2 beta) the loss is zero: it regresses the margin rather than pushing it to infinity.
    assert IPOLoss(beta=0.5)(t(0.0), t(-1.0), t(0.0), t(0.0)).loss.item() == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------------
# SimPO
# --------------------------------------------------------------------------------------------------
def test_simpo_by_hand():
    # beta 2, gamma 1: 2 * (-1 - -2) - 1 = 1 -> log(1 + e^-1); pair 2: 2 * (-3 - -1) - 1 = -5 -> log(1 + e^5)
    out = SimPOLoss(beta=2.0, gamma=1.0)(PC2, PR2)
    assert out.losses.tolist() == pytest.approx([softplus(-1.0), softplus(5.0)])
    assert out.loss.item() == pytest.approx((softplus(-1.0) + softplus(5.0)) / 2)
    assert out.chosen_rewards.tolist() == pytest.approx([-2.0, -6.0])  # beta * avg logp
    assert out.rejected_rewards.tolist() == pytest.approx([-4.0, -2.0])


def test_simpo_ignores_reference_and_gradient_signs():
    pc, pr = t(-1.0, grad=True), t(-2.0, grad=True)
    out = SimPOLoss(beta=2.0, gamma=1.0)(pc, pr, None, None)
    assert out.loss.item() == SimPOLoss(beta=2.0, gamma=1.0)(pc, pr, RC, RR).loss.item()
    out.loss.backward()
    # dL/dlogp_c = -beta * sigmoid(-1) = -2 / (1 + e)
    assert pc.grad.item() == pytest.approx(-2.0 / (1 + math.e))
    assert pr.grad.item() > 0


# --------------------------------------------------------------------------------------------------
# Registry and metrics
# --------------------------------------------------------------------------------------------------
def test_registry_and_class_attributes():
    assert PREFERENCE_LOSSES == {"sigmoid": DPOLoss, "ipo": IPOLoss, "simpo": SimPOLoss}
    assert (DPOLoss.needs_reference, DPOLoss.average_logps) == (True, False)
    assert (IPOLoss.needs_reference, IPOLoss.average_logps) == (True, True)
    assert (SimPOLoss.needs_reference, SimPOLoss.average_logps) == (False, True)
    for cls in PREFERENCE_LOSSES.values():  # one call signature for the trainer
        out = cls()(PC, PR, RC, RR)
        assert isinstance(out, DPOOutput) and out.loss.dim() == 0


def test_preference_metrics_by_hand():
    out = DPOLoss(beta=0.1)(PC2, PR2, RC2, RR2)  # rewards chosen (0.05, -0.1), rejected (-0.05, 0.1)
    m = preference_metrics(out, PC2, PR2)
    assert m == pytest.approx({
        "rewards/chosen": (0.05 - 0.1) / 2,
        "rewards/rejected": (-0.05 + 0.1) / 2,
        "rewards/margins": (0.1 + -0.2) / 2,
        "rewards/accuracies": 0.5,
        "logps/chosen": (-1.0 - 3.0) / 2,
        "logps/rejected": (-2.0 - 1.0) / 2,
    })


# --------------------------------------------------------------------------------------------------
# Cross-check with TRL
# --------------------------------------------------------------------------------------------------
# trl 1.16's DPOTrainer computes its losses inline in `_compute_loss`, which runs the model, so there is
# no function to call on tensors. Its experimental CPOTrainer has `cpo_loss(self, chosen, rejected)`, a
# reference-free version of the same formulas that reads only a few attributes of `self`. Feeding it the
# log-ratios (policy - reference) turns its "sigmoid" and "ipo" into DPO and IPO; "simpo" is SimPO as is.
def _trl_cpo_loss(loss_type, chosen, rejected, beta, label_smoothing=0.0, simpo_gamma=0.0):
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    stub = SimpleNamespace(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                           simpo_gamma=simpo_gamma, alpha=0.0, accelerator=SimpleNamespace(device="cpu"))
    return cpo.CPOTrainer.cpo_loss(stub, chosen, rejected)


@pytest.fixture
def random_logps():
    g = torch.Generator().manual_seed(3)
    return tuple(-torch.rand(16, generator=g, dtype=torch.float64) * 50 for _ in range(4))


def test_dpo_and_ipo_match_trl(monkeypatch, random_logps):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    pc, pr, rc, rr = random_logps
    for ours, loss_type, ls in [(DPOLoss(0.1, 0.0), "sigmoid", 0.0), (DPOLoss(0.1, 0.2), "sigmoid", 0.2),
                                (IPOLoss(0.1), "ipo", 0.0)]:
        out = ours(pc, pr, rc, rr)
        losses, chosen_rewards, rejected_rewards = _trl_cpo_loss(loss_type, pc - rc, pr - rr, 0.1, ls)
        torch.testing.assert_close(out.losses, losses)
        torch.testing.assert_close(out.chosen_rewards, chosen_rewards)
        torch.testing.assert_close(out.rejected_rewards, rejected_rewards)


def test_simpo_matches_trl(monkeypatch, random_logps):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    pc, pr, _, _ = random_logps
    pc, pr = pc / 10, pr / 10  # averaged log-probs are small
    out = SimPOLoss(beta=2.0, gamma=1.0)(pc, pr)
    losses, chosen_rewards, rejected_rewards = _trl_cpo_loss("simpo", pc, pr, 2.0, simpo_gamma=1.0)
    torch.testing.assert_close(out.losses, losses)
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards)
    torch.testing.assert_close(out.rejected_rewards, rejected_rewards)


def test_chosen_nll_by_hand():
    from alignment.losses import chosen_nll

    logps = torch.tensor([-6.0, -2.0])  # summed over 3 and 4 tokens
    counts = torch.tensor([3, 4])
    assert chosen_nll(logps, counts, averaged=False).item() == pytest.approx((6 / 3 + 2 / 4) / 2)
    assert chosen_nll(torch.tensor([-1.5, -0.5]), counts, averaged=True).item() == pytest.approx(1.0)
    assert chosen_nll(torch.tensor([0.0]), torch.tensor([0]), averaged=False).item() == 0.0  # no token: no NaN


# --------------------------------------------------------------------------------------------------
# Per-pair weights: sum_i w_i * loss_i / sum_i w_i
# --------------------------------------------------------------------------------------------------
def test_weighted_mean_by_hand():
    from alignment.losses import weighted_mean

    assert weighted_mean(t(1.0, 4.0), t(3.0, 1.0)).item() == pytest.approx((3 * 1 + 4) / 4)
    assert weighted_mean(t(1.0, 4.0), None).item() == pytest.approx(2.5)  # no weights: the plain mean
    assert weighted_mean(t(1.0, 4.0), t(1.0, 1.0)).item() == pytest.approx(2.5)
    # weight 0: the value is out, even an infinite one
    assert weighted_mean(t(2.0, math.inf), t(1.0, 0.0)).item() == pytest.approx(2.0)
    values = t(1.0, 4.0, grad=True)
    loss = weighted_mean(values, t(0.0, 0.0))  # every weight 0: 0, and nothing to learn
    loss.backward()
    assert loss.item() == 0.0 and values.grad.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="do not match"):
        weighted_mean(t(1.0, 4.0), t(1.0))


def test_weighted_bradley_terry_by_hand():
    # diffs (1, -1): losses log(1 + e^-1), log(1 + e^1); weights (3, 1)
    # centering: (2 + 1)^2 = 9 and (0.5 + 1.5)^2 = 4 -> (3 * 9 + 4) / 4 = 7.75, times 0.01
    loss = bradley_terry_loss(t(2.0, 0.5), t(1.0, 1.5), center_coef=0.01, weights=t(3.0, 1.0))
    assert loss.item() == pytest.approx((3 * softplus(-1.0) + softplus(1.0)) / 4 + 0.01 * 7.75)
    # gradient: d/dr_c of w_0 * log(1 + e^-(r_c - r_r)) / (w_0 + w_1) = -3 sigmoid(-1) / 4 (no centering)
    chosen = t(2.0, 0.5, grad=True)
    bradley_terry_loss(chosen, t(1.0, 1.5), weights=t(3.0, 0.0)).backward()
    assert chosen.grad.tolist() == pytest.approx([-1 / (1 + math.e), 0.0])  # 3/3 of pair 0, nothing of pair 1


def test_weighted_preference_losses_by_hand():
    w = t(1.0, 3.0)
    # DPO, beta 0.1: losses log(1 + e^-0.1), log(1 + e^0.2)
    out = DPOLoss(beta=0.1)(PC2, PR2, RC2, RR2, weights=w)
    assert out.loss.item() == pytest.approx((softplus(-0.1) + 3 * softplus(0.2)) / 4)
    assert out.losses.tolist() == pytest.approx([softplus(-0.1), softplus(0.2)])  # per pair: unweighted
    # IPO, beta 0.1: losses 16 and 49
    assert IPOLoss(beta=0.1)(PC2, PR2, RC2, RR2, weights=w).loss.item() == pytest.approx((16 + 3 * 49) / 4)
    # SimPO, beta 2, gamma 1: losses log(1 + e^-1), log(1 + e^5)
    out = SimPOLoss(beta=2.0, gamma=1.0)(PC2, PR2, weights=w)
    assert out.loss.item() == pytest.approx((softplus(-1.0) + 3 * softplus(5.0)) / 4)
    # conservative DPO, eps 0.1: per pair -(0.9) log sigmoid(x) - 0.1 log sigmoid(-x) at x = 0.1 and -0.2
    cdpo = [0.9 * softplus(-x) + 0.1 * softplus(x) for x in (0.1, -0.2)]
    out = DPOLoss(beta=0.1, label_smoothing=0.1)(PC2, PR2, RC2, RR2, weights=t(0.0, 2.0))
    assert out.loss.item() == pytest.approx(cdpo[1])


def test_weighted_chosen_nll_by_hand():
    from alignment.losses import chosen_nll

    # per-token NLL 6/3 = 2 and 2/4 = 0.5; weights (1, 3) -> (2 + 3 * 0.5) / 4
    nll = chosen_nll(torch.tensor([-6.0, -2.0]), torch.tensor([3, 4]), averaged=False, weights=torch.tensor([1.0, 3.0]))
    assert nll.item() == pytest.approx(3.5 / 4)
