"""What ``ml-patterns compare`` runs: one settings object, shared by the parent and both workers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ml_patterns.errors import UsageError
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OPTIMIZERS, OptimizerConfig, ScheduleConfig
from ml_patterns.samplers import BatchSampler, fit_buckets, make_sampler
from ml_patterns.verdict import ENSEMBLE_SIZE

BACKENDS = ("torch", "jax")
LABELS = {"torch": "PyTorch (eager)", "jax": "JAX (jax.jit)", "torch_compile": "PyTorch (torch.compile)"}
# ``--contenders``: the runs timed, by their name there -> the run's key in the report. eager and jit
# are the pair judged for agreement; compile (torch.compile) is optional, and judged against eager too.
CONTENDERS = {"eager": "torch", "compile": "torch_compile", "jit": "jax"}
# The contender each backend's judged run is (eager torch, jax.jit).
JUDGED = {run: name for name, run in CONTENDERS.items() if run in BACKENDS}
DEFAULT_CONTENDERS = ("eager", "jit")
# The side the other is measured against; the verdict's runs of it (ml_patterns.verdict): from the
# initial weights moved by one ulp (the ensemble), and in float64 (the anchor).
REFERENCE = BACKENDS[0]
ENSEMBLE_LABEL = "PyTorch, ulp off"
ANCHOR_LABEL = "PyTorch, float64"
MODELS = ("multitask", "autoencoder")
DEVICES = ("auto", "cpu", "gpu")
# ``--precision``: what compare trains in (ml_patterns.precision; tf32 computes float32 on a CPU).
PRECISIONS = ("float32", "bf16-mixed")


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
    optimizer_name: str = "adamw"  # one of ml_patterns.optim.OPTIMIZERS
    learning_rate: float = 1e-3
    weight_decay: float = 0.01  # adamw, adam_l2 and sgd; must be 0 for adam
    clip_grad_norm: float = 1.0
    warmup_fraction: float = 0.1
    seed: int = 0
    # Longer sequences are truncated (5 of the 4,991 default molecules; the report counts them):
    # the few longest would otherwise set the cost of every batch they land in.
    max_length: int = 128
    # Limit the training split (0: all of it), e.g. for a quick look.
    max_train_molecules: int = 0
    # Limit the validation and test splits, each (0: all of it): validating and testing a quick look
    # on the whole splits can cost more than its training.
    max_eval_molecules: int = 0
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
    # The trainers' precision (``--precision``: float32 or bf16-mixed; ml_patterns.precision): in
    # bf16-mixed the verdict's noise is measured in bfloat16 (compare.precision_runs, docs/PRECISION.md).
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_settings(self)

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
            self.optimizer_name,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            clip_grad_norm=self.clip_grad_norm or None,  # 0: no clipping
            schedule=schedule,
        )


def check_settings(settings: CompareSettings) -> None:
    """Refuses (``UsageError``) a value that cannot train, saying which field and why."""
    problems = []
    fields = {field.name: field for field in dataclasses.fields(settings)}
    for name, field in fields.items():
        value, kind = getattr(settings, name), type(field.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            continue  # 1 for 1.0
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{name} must be {kind.__name__}, got {value!r}")
    if problems:
        raise UsageError("invalid compare settings: " + "; ".join(problems))
    positive = ("epochs", "batch_size", "d_model", "n_heads", "n_layers", "d_ff", "max_length", "max_buckets")
    problems += [
        f"{name} must be at least 1, got {getattr(settings, name)}" for name in positive if getattr(settings, name) < 1
    ]
    non_negative = ("max_train_molecules", "max_eval_molecules", "threads", "seed", "clip_grad_norm", "weight_decay")
    problems += [
        f"{name} must be 0 or more, got {getattr(settings, name)}"
        for name in non_negative
        if not getattr(settings, name) >= 0
    ]
    if settings.model not in MODELS:
        problems.append(f"model must be one of {', '.join(MODELS)}, got {settings.model!r}")
    if settings.optimizer_name not in OPTIMIZERS:
        problems.append(f"optimizer_name must be one of {', '.join(OPTIMIZERS)}, got {settings.optimizer_name!r}")
    elif settings.optimizer_name == "adam" and settings.weight_decay:
        problems.append("adam has no weight decay: set weight_decay 0, or use adamw (decoupled) or adam_l2 (L2)")
    if not 0 < settings.learning_rate < float("inf"):
        problems.append(f"learning_rate must be a positive finite number, got {settings.learning_rate}")
    if not 0 <= settings.warmup_fraction < 1:
        problems.append(f"warmup_fraction must be in [0, 1), got {settings.warmup_fraction}")
    if settings.precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {settings.precision!r}")
    if settings.d_model % settings.n_heads:
        problems.append(f"d_model ({settings.d_model}) must be a multiple of n_heads ({settings.n_heads})")
    if problems:
        raise UsageError("invalid compare settings: " + "; ".join(problems))


def settings_from_json(path, **overrides) -> CompareSettings:
    """``--config FILE.json``: a JSON object of ``CompareSettings`` fields (model sizes, optimizer,
    seed, ...), then ``overrides`` (the flags given on the command line) on top. Unknown keys and bad
    values are refused (``UsageError``) naming them."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--config {path}: not a readable JSON file ({error})") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a JSON object of settings, got {type(values).__name__}")
    known = [field.name for field in dataclasses.fields(CompareSettings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"--config {path}: unknown key(s) {unknown}; accepted: {', '.join(known)}")
    try:
        return CompareSettings(**{**values, **overrides})
    except UsageError as error:
        raise UsageError(f"--config {path}: {error}") from None


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
    contender: str = "eager"  # the name of CONTENDERS this run is, for the record
    compile_loss: bool = False  # the backend's optional compiler on the loss (runtime.compile_loss)
    count_flops: bool = False  # count one training step's FLOPs (runtime.count_step_flops)
    pair: dict | None = None  # your own model pair (``pair.PairSpec.to_dict``); None: the molecule workload

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
    contender: str = ""
    flops_per_step: float | None = None  # one training step's FLOPs (None: not counted)
    flops_counter: str = ""  # what counted them (runtime.count_step_flops's "counter")
    data_sha256: str = ""  # of every training batch, in order: both backends must have trained on the same

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerResult:
        return cls(**json.loads(text))


def trained_weights_path(out: Path) -> Path:
    """Where the worker writing the result ``out`` saves its trained weights (a portable checkpoint).
    Here, not in ``worker``: the parent must not import the module it runs as ``python -m``."""
    return out.with_suffix(".safetensors")
