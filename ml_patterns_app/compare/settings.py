"""What ``ml-patterns compare`` runs: one settings object, shared by the parent and both workers."""

from __future__ import annotations

import dataclasses

from ml_patterns.collate import bucket_ladder
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OptimizerConfig, ScheduleConfig

BACKENDS = ("torch", "jax")
LABELS = {"torch": "PyTorch (eager)", "jax": "JAX (jax.jit)"}
# The third run: torch again, from the initial weights moved by one ulp (the float32 noise floor).
FLOOR_RUN = "torch_one_ulp"
FLOOR_LABEL = "PyTorch, ulp off"
MODELS = ("multitask", "autoencoder")
DEVICES = ("auto", "cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """The run ``ml-patterns compare`` makes; defaults finish in a few minutes on 2 CPU cores."""

    model: str = "multitask"
    epochs: int = 3
    batch_size: int = 64
    # A small model: the comparison is about the frameworks, and it must run on a laptop CPU.
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    clip_grad_norm: float = 1.0
    warmup_fraction: float = 0.1
    seed: int = 0
    # Longer sequences are truncated (5 of the 4,991 default molecules; the report counts them):
    # the few longest would otherwise set the cost of every batch they land in.
    max_length: int = 128
    # Limit the training split (0: all of it), e.g. for a quick look.
    max_train_molecules: int = 0
    # Batches of molecules of similar length (ml_patterns.samplers.LengthGroupedSampler): 80% of the
    # padded token positions are real tokens, against 30% for random batches (docs/PERFORMANCE.md).
    group_by_length: bool = True
    # CPUs each worker may use (0: all of them). On a shared machine 1 is faster and steadier:
    # torch's OpenMP threads wait at every barrier for a peer that lost its core (docs/PERFORMANCE.md).
    threads: int = 0

    def buckets(self, manifest: dict) -> tuple[int, ...]:
        """The padded lengths (a bounded number of jax.jit compilations), up to ``max_length``."""
        lengths = manifest["sequence_length"]
        return bucket_ladder(lengths["min"], min(lengths["max"], self.max_length))

    def model_config(self, manifest: dict, max_len: int) -> ModelConfig:
        # Dropout off: torch and JAX draw dropout masks from different generators, so two runs with
        # it on cannot agree to the history tolerance (docs/PARITY.md).
        return ModelConfig.from_manifest(
            manifest,
            architecture=self.model,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            n_decoder_layers=max(1, self.n_layers // 2),
            d_ff=self.d_ff,
            dropout=0.0,
            attention_dropout=0.0,
            max_len=max_len,
            seed=self.seed,
        )

    def optimizer(self, steps: int) -> OptimizerConfig:
        schedule = ScheduleConfig(warmup_steps=max(1, int(self.warmup_fraction * steps)), total_steps=max(2, steps))
        return OptimizerConfig(
            "adamw",
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            clip_grad_norm=self.clip_grad_norm,
            schedule=schedule,
        )
