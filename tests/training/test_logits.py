"""Output-layer logits at labelled positions only: the same losses and gradients as the full forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alignment.logits import causal_mask, labelled_logits, split_model, token_logps
from alignment.losses import sequence_logps
from alignment.modeling import apply_lora, load_causal_lm


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 12), generator=g)  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 5:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    labels[2, :] = -100  # a row with nothing to learn
    return ids, mask, labels


def _full(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return sequence_logps(logits[:, :-1], labels[:, 1:])[0]  # (B,)


def test_selected_rows_match_the_full_forward(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    model = load_causal_lm(tiny_model_dir)
    assert split_model(model) is not None  # the fast path, not the fallback
    ids, mask, labels = _batch(model.config.vocab_size)
    out = labelled_logits(model, ids, labels, mask)
    n = int((labels[:, 1:] != -100).sum())
    assert out.logits.shape == (n, model.config.vocab_size)
    assert out.counts().tolist() == [8, 5, 0]  # labels at tokens 4..11 of row 0 and 4..8 of row 1
    sparse = out.per_row_sum(token_logps(out))
    full = _full(model, ids, mask, labels)
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-5)
    assert float(sparse[2].detach()) == 0.0

    # Gradients agree too (what training sees).
    sparse.sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    _full(model, ids, mask, labels).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)

    # Cross-entropy over the selected rows is the SFT loss (mean NLL over labelled tokens).
    nll = F.cross_entropy(out.logits.detach(), out.targets)
    ref = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits[:, :-1].transpose(1, 2).detach(),
                          labels[:, 1:])
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)


def test_lora_wrapper_and_adapter_off(tiny_model_dir: Path) -> None:
    from alignment.config import LoRAConfig

    torch.manual_seed(0)
    lora = LoRAConfig(enabled=True, r=4, dropout=0.0)
    model = apply_lora(load_causal_lm(tiny_model_dir, trainable_adapter=True), lora).eval()
    with torch.no_grad():  # make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids, mask, labels = _batch(model.config.vocab_size)
    on = labelled_logits(model, ids, labels, mask)
    torch.testing.assert_close(on.per_row_sum(token_logps(on)), _full(model, ids, mask, labels), rtol=1e-5, atol=1e-5)
    with model.disable_adapter():
        off = labelled_logits(model, ids, labels, mask)
        torch.testing.assert_close(off.per_row_sum(token_logps(off)), _full(model, ids, mask, labels),
                                   rtol=1e-5, atol=1e-5)
    assert not torch.allclose(on.logits, off.logits)


def test_unknown_layouts_fall_back_to_the_full_forward(tiny_model_dir: Path) -> None:
    model = load_causal_lm(tiny_model_dir)
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style: the forward is no longer lm_head(hidden)
    assert split_model(model) is None
    ids, mask, labels = _batch(model.config.vocab_size)
    model.config.final_logit_softcapping = None
    expected = _full(model, ids, mask, labels)
    model.config.final_logit_softcapping = 30.0
    out = labelled_logits(model, ids, labels, mask)
    # Llama ignores the field in its forward, so the fallback's numbers equal the plain forward's.
    torch.testing.assert_close(out.per_row_sum(token_logps(out)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ignore", [-100])
def test_no_labels_gives_zero_rows(tiny_model_dir: Path, ignore: int) -> None:
    model = load_causal_lm(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    out = labelled_logits(model, ids, torch.full_like(ids, ignore))
    assert out.logits.shape[0] == 0
    assert out.per_row_sum(token_logps(out)).tolist() == [0.0, 0.0]


def test_causal_mask_is_dropped_only_for_right_padding() -> None:
    right = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert causal_mask(right) is None
    assert causal_mask(torch.ones(2, 3, dtype=torch.long)) is None
    assert causal_mask(None) is None
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # PPO's left-padded prompts
    middle = torch.tensor([[1, 1, 0, 1]])  # left-padded prompt + right-padded answer, packed oddly
    empty_row = torch.tensor([[1, 1], [0, 0]])
    for mask in (left, middle, empty_row):
        assert causal_mask(mask) is mask
    four_d = torch.ones(1, 1, 3, 3)
    assert causal_mask(four_d) is four_d


def test_right_padded_scores_and_gradients_match_with_the_mask(tiny_rm_dir: Path) -> None:
    """A reward model read at each row's last real token: the same scores and gradients whether the
    right padding is masked or left to the causal mask alone."""
    from alignment.modeling import load_reward_model
    from alignment.reward import LastTokenScores

    torch.manual_seed(0)
    model = load_reward_model(tiny_rm_dir)
    scorer = LastTokenScores(model)
    ids, mask, _ = _batch(model.config.vocab_size)
    assert causal_mask(mask) is None

    def scores_and_grads(m: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        model(input_ids=ids, attention_mask=m, use_cache=False)
        s = scorer.take(mask)  # (B,)
        (s * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
        return s.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    masked, g_masked = scores_and_grads(mask)
    unmasked, g_unmasked = scores_and_grads(causal_mask(mask))
    torch.testing.assert_close(unmasked, masked, rtol=1e-5, atol=1e-5)
    assert g_masked.keys() == g_unmasked.keys() and g_masked
    for name in g_masked:
        torch.testing.assert_close(g_unmasked[name], g_masked[name], rtol=1e-4, atol=1e-6, msg=name)
    scorer.remove()


# --------------------------------------------------------------------------------------------------
# Architectures that change their logits after the output layer
# --------------------------------------------------------------------------------------------------
def _tiny_granite() -> torch.nn.Module:
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, logits_scaling=8.0)
    return GraniteForCausalLM(config).eval()


def test_granite_logits_scaling_takes_the_full_forward() -> None:
    model = _tiny_granite()
    assert split_model(model) is None  # its forward divides the output layer's logits by logits_scaling
    ids, mask, labels = _batch(model.config.vocab_size)
    out = labelled_logits(model, ids, labels, mask)
    torch.testing.assert_close(out.per_row_sum(token_logps(out)), _full(model, ids, mask, labels))


class _ScaledLlama(torch.nn.Module):
    """A model whose forward scales the output layer's logits with nothing in its config saying so."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_decoder(self) -> torch.nn.Module:
        return self.inner.get_decoder()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits * 3.0
        return out


def test_an_unannounced_logit_scale_is_caught_on_the_first_batch(tiny_model_dir: Path, capsys) -> None:
    model = _ScaledLlama(load_causal_lm(tiny_model_dir))
    assert split_model(model) is not None  # nothing in the config gives it away
    ids, mask, labels = _batch(model.config.vocab_size)
    for _ in range(2):  # the verdict is kept: the second batch takes the full forward without a second check
        out = labelled_logits(model, ids, labels, mask)
        torch.testing.assert_close(out.per_row_sum(token_logps(out)), _full(model, ids, mask, labels))
    assert capsys.readouterr().out.count("WARNING") == 1


def test_a_plain_model_keeps_the_shortcut_after_its_check(tiny_model_dir: Path, capsys) -> None:
    from alignment.logits import _VERDICT

    model = load_causal_lm(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)
    labelled_logits(model, ids, labels, mask)
    assert getattr(model, _VERDICT) is True
    assert "WARNING" not in capsys.readouterr().out
