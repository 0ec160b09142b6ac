"""Tolerances of ../shared/PARITY.md (float32), in one place. Never loosen one to pass a test:
find the cause, and where it is a real, explained difference, write the explanation by the test."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


# CPU, float32.
LOSS = Tolerance(rtol=1e-6, atol=1e-6)  # losses, masked CE, combined loss (single call)
FORWARD = Tolerance(rtol=0.0, atol=1e-5)  # model forward outputs, given copied weights
GRADIENT = Tolerance(rtol=1e-5, atol=1e-6)  # gradients of every parameter
HISTORY = Tolerance(rtol=1e-4, atol=1e-6)  # training histories, per epoch value
EXACT = Tolerance(rtol=0.0, atol=0.0)  # collate outputs, tokenizer ids, sampler order

# GPU with full float32 forced.
GPU = {
    "loss": Tolerance(rtol=1e-5, atol=1e-6),
    "forward": Tolerance(rtol=0.0, atol=1e-4),
    "gradient": Tolerance(rtol=1e-4, atol=1e-5),
    "history": Tolerance(rtol=1e-3, atol=1e-6),
}
