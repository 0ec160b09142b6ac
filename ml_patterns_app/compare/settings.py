"""What ``ml-patterns compare`` runs: one settings object, shared by the parent and both workers."""

from __future__ import annotations

import dataclasses
import json

from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OptimizerConfig, ScheduleConfig
from ml_patterns.samplers import BatchSampler, fit_buckets, make_sampler
from ml_patterns.verdict import ENSEMBLE_SIZE

BACKENDS = ("torch", "jax")
LABELS = {"torch": "PyTorch (eager)", "jax": "JAX (jax.jit)"}
# The side the other is measured against; the verdict's runs of it (ml_patterns.verdict): from the
# initial weights moved by one ulp (the ensemble), and in float64 (the anchor).
REFERENCE = BACKENDS[0]
ENSEMBLE_LABEL = "PyTorch, ulp off"
ANCHOR_LABEL = "PyTorch, float64"
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
    # Batches of molecules of similar length (ml_patterns.samplers.LengthGroupedSampler): far fewer
    # padded token positions than random batches (docs/PERFORMANCE.md).
    group_by_length: bool = True
    # Padded lengths, fitted to the run's batches (ml_patterns.samplers.fit_buckets). Each one is a
    # jax.jit program for the gradients and one for evaluation, compiled (or loaded from the compile
    # cache) before its first step: few lengths, each fitted to where the batches' lengths fall
    # rather than a geometric ladder, so that padding stays low with few programs (docs/PERFORMANCE.md).
    max_buckets: int = 6
    # CPUs each worker may use (0: all of them). On a shared machine 1 is faster and steadier:
    # torch's OpenMP threads wait at every barrier for a peer that lost its core (docs/PERFORMANCE.md).
    threads: int = 0
    # Reruns of the reference from the initial weights one ulp off, each with its own sign seed: the
    # verdict's floor is the largest of their divergences (ml_patterns.verdict; at least 3).
    floor_runs: int = ENSEMBLE_SIZE
    # The trainers' precision (ml_patterns.precision). No command-line flag yet: the verdict's noise
    # floor is float32's, and a bf16-mixed run needs one measured in bfloat16 (docs/PRECISION.md).
    precision: str = "float32"

    def train_sampler(self, train) -> BatchSampler:
        """The sampler both backends' training loaders draw from (``make_loader`` builds the same)."""
        return make_sampler(train, self.batch_size, seed=self.seed, group_by_length=self.group_by_length)

    def buckets(self, manifest: dict, sampler: BatchSampler, lengths) -> tuple[int, ...]:
        """The padded lengths: at most ``max_buckets``, fitted to ``sampler``'s batches over the run's
        epochs (``lengths``: the training records'); the last is the dataset's longest molecule up to
        ``max_length``, so validation and test molecules fit too."""
        longest = min(manifest["sequence_length"]["max"], self.max_length)
        return fit_buckets(
            sampler, lengths, max_buckets=self.max_buckets, max_length=longest, epochs=range(self.epochs)
        )

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


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What the parent (``runner``) asks of one worker: train ``settings`` on ``data`` from the
    initial weights at ``weights`` (the first worker writes them there: ``write_weights``), on
    ``devices`` devices of the kind ``device`` selects, JAX keeping its compiled programs in
    ``compile_cache`` (None: nowhere). Crosses the process boundary as JSON (``to_json``/``from_json``)."""

    data: str
    settings: CompareSettings
    weights: str
    write_weights: bool = False
    float64: bool = False  # the reference in float64, the verdict's anchor (torch only)
    rounding_seed: int | None = None  # a run of the verdict's ensemble: one ulp of noise a step (torch only)
    device: str = "auto"
    devices: int = 1
    compile_cache: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerJob:
        fields = json.loads(text)
        return cls(**{**fields, "settings": CompareSettings(**fields["settings"])})


@dataclasses.dataclass(frozen=True)
class WorkerResult:
    """What one worker reports back (``report`` reads it): its history, every step's loss, each
    epoch's time (one host sync per epoch: no step is waited for) and the programs compiled by its
    end, its test metrics, device, versions and peak memory.
    Written by the worker as JSON (``to_json``), read by the parent (``from_json``), which adds
    ``machine_load`` (what else ran meanwhile)."""

    history: dict  # History.as_dict(): "epoch", "train_loss", "val_loss" lists
    steps_per_epoch: int
    samples_per_epoch: int
    peak_memory_bytes: int
    peak_memory_kind: str
    devices: int = 1
    step_losses: list = dataclasses.field(default_factory=list)
    epoch_times: list = dataclasses.field(default_factory=list)  # [{"epoch", "train_s", "val_s"}]
    # [epoch] programs compiled for the steps by the epoch's end (None: the backend compiles nothing)
    epoch_compilations: list = dataclasses.field(default_factory=list)
    load_during: list = dataclasses.field(default_factory=list)  # 1-minute load average at each epoch's end
    weight_norms: list = dataclasses.field(default_factory=list)  # the weights' global norm at each epoch's end
    machine_load: dict = dataclasses.field(default_factory=dict)
    cpus: dict = dataclasses.field(default_factory=dict)  # restrict_cpus's record
    padding: dict | None = None  # the sampler, buckets, pad_batches_to and padding_utilization
    compilations: int | None = None  # programs compiled (None: the backend compiles nothing)
    compile_cache: dict = dataclasses.field(default_factory=dict)
    max_length: int = 0
    truncated: dict = dataclasses.field(default_factory=dict)  # molecules longer than max_length, per split
    test_metrics: dict = dataclasses.field(default_factory=dict)
    device: dict = dataclasses.field(default_factory=dict)  # runtime.describe's
    versions: dict = dataclasses.field(default_factory=dict)
    threads: int = 0
    precision: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerResult:
        return cls(**json.loads(text))
