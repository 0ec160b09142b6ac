"""Adam/AdamW hyperparameters read on both sides, and the optax call that matches torch."""

from __future__ import annotations

import optax
import pytest
import torch

from ml_patterns_app.porting.settings import differences


def _torch(cls, **kwargs):
    return cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)


@pytest.mark.parametrize(
    ("torch_optimizer", "tx", "found", "fix"),
    [
        (
            _torch(torch.optim.AdamW, lr=1e-3),
            optax.adamw(1e-3),
            ["weight decay: torch 0.01 vs optax 0.0001"],
            "optax.adamw(",
        ),
        (
            _torch(torch.optim.Adam, lr=1e-3),
            optax.adam(1e-3, b2=0.99),
            ["b2 (betas[1]): torch 0.999 vs optax 0.99"],
            "optax.adam(",
        ),
        (
            _torch(torch.optim.Adam, lr=1e-3),
            optax.adam(1e-3, eps=0.0, eps_root=1e-8),
            [
                "eps: torch 1e-08 vs optax 0",
                "optax eps_root 1e-08 puts epsilon inside the square root; torch adds eps outside",
            ],
            "optax.adam(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08)",
        ),
        (
            _torch(torch.optim.Adam, lr=1e-3, weight_decay=0.1),
            optax.adamw(1e-3, weight_decay=0.1),
            ["weight decay: torch adds it to the gradient (L2), the other decays the weights (AdamW)"],
            "optax.chain(optax.add_decayed_weights(0.1), optax.adam(",
        ),
        (
            _torch(torch.optim.Adam, lr=1e-2),
            optax.adam(1e-3),
            ["learning rate: torch 0.01 vs optax 0.001"],
            "learning_rate=0.01",
        ),
        (_torch(torch.optim.AdamW, lr=1e-3, weight_decay=0.01), optax.adamw(1e-3, weight_decay=0.01), [], ""),
        (_torch(torch.optim.SGD, lr=1e-3), optax.sgd(1e-3), [], ""),  # not read: nothing said
        (_torch(torch.optim.Adam, lr=1e-3), optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), [], ""),
    ],
)
def test_differing_hyperparameters_are_named_with_the_matching_optax_call(torch_optimizer, tx, found, fix):
    got, call = differences(torch_optimizer, tx)
    assert got == found
    assert fix in call and bool(call) == bool(fix)
