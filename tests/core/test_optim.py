"""``core.optim.adamw_new_weights``: AdamW's update by hand, and against ``torch.optim.AdamW`` itself."""

from __future__ import annotations

import pytest
import torch

from opdkit.core.optim import AdamWSettings, adamw_new_weights

SETTINGS = AdamWSettings(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


def test_first_step_moves_each_weight_by_lr_after_decay():
    # t = 1, θ = 1, g = 1, no moments: m = 0.1, v = 0.001; m̂ = 0.1/(1 − 0.9) = 1, √v̂ = √(0.001/0.001) = 1;
    # θ' = 1·(1 − 0.1·0.01) − 0.1·1/(1 + 1e-8) = 0.999 − 0.1 = 0.899.
    # θ = 2, g = −3: m = −0.3, v = 0.009; m̂ = −3, √v̂ = 3; θ' = 2·0.999 + 0.1 = 2.098.
    new = adamw_new_weights(torch.tensor([1.0, 2.0]), torch.tensor([1.0, -3.0]), None, None, 1, SETTINGS)
    torch.testing.assert_close(new, torch.tensor([0.899, 2.098]), atol=1e-6, rtol=0)


def test_second_step_reads_the_moments_and_a_zero_gradient_still_moves_the_weight():
    # t = 2 after the first step above: θ = 0.899, m = 0.1, v = 0.001, g = 0:
    # m' = 0.09, v' = 0.000999; m̂ = 0.09/(1 − 0.81) = 0.473684; √v̂ = √(0.000999/0.001999) = 0.706930;
    # θ' = 0.899·0.999 − 0.1·0.473684/0.706930 = 0.898101 − 0.067006 = 0.831095.
    new = adamw_new_weights(
        torch.tensor([0.899]), torch.tensor([0.0]), torch.tensor([0.1]), torch.tensor([0.001]), 2, SETTINGS
    )
    assert new.item() == pytest.approx(0.831095, abs=2e-6)


def test_without_weight_decay_a_zero_gradient_and_zero_moments_leave_the_weight():
    no_decay = AdamWSettings(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    theta = torch.tensor([0.5, -1.5])
    zeros = torch.zeros(2)
    assert torch.equal(adamw_new_weights(theta, zeros, zeros, zeros, 3, no_decay), theta)


def test_equals_torch_adamw_over_three_steps():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7))
    opt = torch.optim.AdamW([p], lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    settings = AdamWSettings(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1)
    for step in (1, 2, 3):
        p.grad = torch.randn(7)
        state = opt.state.get(p, {})
        moments = (state["exp_avg"].clone(), state["exp_avg_sq"].clone()) if state else (None, None)
        predicted = adamw_new_weights(p.detach().clone(), p.grad, *moments, step, settings)
        opt.step()
        torch.testing.assert_close(predicted, p.detach(), atol=1e-6, rtol=1e-6)
