"""Framework-free configuration dataclasses: one place for every default, each with its reason."""

from __future__ import annotations

import dataclasses

from ml_patterns.molecules.tokenizer import MASK_ID

# The RDKit descriptors ml_patterns.molecules.prepare can add as targets (named as RDKit names
# them), and those the default dataset gets.
RDKIT_PROPERTIES = ("MolLogP", "MolWt", "NumRings", "NumHDonors", "TPSA", "NumHAcceptors", "NumRotatableBonds")
DEFAULT_RDKIT_PROPERTIES = ("MolLogP", "MolWt", "NumRings", "NumHDonors")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How ``ml-patterns prepare`` turns a molecule table into the lazy on-disk layout."""

    # Seeds the train/val/test split; the whole output is a deterministic function of it.
    seed: int = 0
    # Fractions of the molecules held out; train gets the rest. 10/10 is small enough to keep
    # 4,000 training molecules of the 5,000 default ones.
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Records per shard file. A shard is opened once and then read line by line, so this only
    # bounds the size of one file, not what is held in memory.
    shard_size: int = 512
    # RDKit descriptors added as extra targets (the default dataset's multi-task labels).
    rdkit_properties: tuple[str, ...] = DEFAULT_RDKIT_PROPERTIES

    def __post_init__(self) -> None:
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ValueError(
                f"split fractions must lie in [0, 1), got val={self.val_fraction}, test={self.test_fraction}"
            )
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave some molecules for training")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")


# The masked-token head's name among a MultiTaskModel's heads (so no target may be called this).
MLM_TASK = "mlm"
# A target's kind, as the manifest records it (``targets.NAME.task``) and ``prepare --task`` names it.
REGRESSION, CLASSIFICATION = "regression", "classification"
TASK_KINDS = (REGRESSION, CLASSIFICATION)
ARCHITECTURES = ("multitask", "autoencoder")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The molecule models of ``models.build_model`` (both backends), with every default explicit.

    Where PyTorch and JAX/Flax defaults differ (docs/PARITY.md) the choice is made here, once,
    and both backends read it: LayerNorm epsilon, the GELU form. Attention scaling
    (``1/sqrt(head_dim)``) and the masking value (``finfo(dtype).min``, applied with ``where``) are
    fixed in the backends' attention and documented in ``torch_impl.models``.

    Build it from a prepared dataset with ``ModelConfig.from_manifest(manifest, **overrides)``: the
    vocabulary size, the targets and their train-split mean/std come from the manifest, so a
    checkpoint (which stores this config) knows how to de-standardize its own predictions.
    """

    # "multitask": a SMILES Transformer encoder with one regression head per target and a
    # masked-token head. "autoencoder": the same encoder, pooled to one latent vector, and a
    # causal Transformer decoder reconstructing the tokens from it.
    architecture: str = "multitask"
    # Token vocabulary, special tokens included (ml_patterns.molecules.tokenizer: PAD=0 ... MASK=4).
    vocab_size: int = 128
    # Rows of the learned position table: the longest padded batch a model accepts (a longer one
    # is refused with an error, not truncated). The default dataset's longest molecule is 270
    # tokens with BOS/EOS.
    max_len: int = 512
    # Width of every hidden state; a multiple of n_heads.
    d_model: int = 128
    n_heads: int = 4
    # Encoder layers (pre-LayerNorm), and the autoencoder's decoder layers.
    n_layers: int = 4
    n_decoder_layers: int = 2
    # Hidden width of each feed-forward block (4 x d_model, as in BERT and GPT).
    d_ff: int = 512
    # Dropout after the embeddings, on each residual branch and inside the feed-forward and head
    # MLPs; attention_dropout on the attention weights.
    dropout: float = 0.1
    attention_dropout: float = 0.1
    # torch's LayerNorm default; Flax's is 1e-6. Set on both sides from here.
    layer_norm_eps: float = 1e-5
    # False: the exact erf GELU (torch's default); jax.nn.gelu defaults to the tanh approximation.
    gelu_approximate: bool = False
    # Targets, one head each, with the train-split statistics used to standardize a regression
    # target's labels ((y - mean) / std) for training (a classification target's are 0 and 1).
    tasks: tuple[str, ...] = ()
    target_mean: tuple[float, ...] = ()
    target_std: tuple[float, ...] = ()
    # Per task: 0 for regression (MSE), C >= 2 for classification into the classes 0..C-1 (binary:
    # one logit and binary cross-entropy; C > 2: C logits and cross-entropy). Empty: all regression.
    task_classes: tuple[int, ...] = ()
    # Weight of the masked-token loss in the multi-task total (each regression loss has weight 1);
    # 0 leaves the masked-token head out.
    mlm_weight: float = 1.0
    # BERT's corruption: this fraction of the real tokens is selected for prediction; of those 80%
    # become MASK, 10% a random token, 10% stay (ml_patterns.molecules.masking).
    mlm_mask_prob: float = 0.15
    # Seeds parameter initialization (both backends) and JAX's dropout streams.
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.architecture not in ARCHITECTURES:
            problems.append(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.vocab_size <= MASK_ID:
            problems.append(f"vocab_size must exceed the special tokens' ids (> {MASK_ID}), got {self.vocab_size}")
        for name in ("max_len", "d_model", "n_heads", "n_layers", "d_ff"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_decoder_layers < 1 and self.architecture == "autoencoder":
            problems.append(f"n_decoder_layers must be positive, got {self.n_decoder_layers}")
        if self.n_heads >= 1 and self.d_model % self.n_heads:
            problems.append(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not self.layer_norm_eps > 0:
            problems.append(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if not 0.0 < self.mlm_mask_prob < 1.0:
            problems.append(f"mlm_mask_prob must lie in (0, 1), got {self.mlm_mask_prob}")
        if self.mlm_weight < 0:
            problems.append(f"mlm_weight must be >= 0, got {self.mlm_weight}")
        problems.extend(_task_problems(self))
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def has_mlm_head(self) -> bool:
        return self.architecture == "multitask" and self.mlm_weight > 0

    def classes(self, task: str) -> int:
        """0 for a regression task, its number of classes for a classification task."""
        return self.task_classes[self.tasks.index(task)] if self.task_classes else 0

    @property
    def regression_tasks(self) -> tuple[str, ...]:
        return tuple(task for task in self.tasks if not self.classes(task))

    @classmethod
    def from_manifest(cls, manifest: dict, **overrides) -> ModelConfig:
        """The config for a prepared dataset (``ml_patterns.molecules.prepare``'s manifest), then ``overrides``.

        ``max_len`` stays the default (or the override): collate with ``max_length=config.max_len``
        so that a longer molecule is cut rather than refused.
        """
        targets = manifest["targets"]
        fields = {
            "vocab_size": manifest["vocab_size"],
            "tasks": tuple(targets),
            "target_mean": tuple(float(t["mean"]) for t in targets.values()),
            "target_std": tuple(float(t["std"]) for t in targets.values()),
        }
        if any(t.get("task") == CLASSIFICATION for t in targets.values()):
            fields["task_classes"] = tuple(
                int(t["classes"]) if t.get("task") == CLASSIFICATION else 0 for t in targets.values()
            )
        return cls.from_dict({**fields, **overrides})

    def to_dict(self) -> dict:
        """JSON-ready fields (tuples become lists); ``from_dict`` inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _task_problems(config: ModelConfig) -> list[str]:
    problems = []
    tasks = config.tasks
    if len(set(tasks)) != len(tasks):
        problems.append(f"task names repeat: {list(tasks)}")
    for name in tasks:
        # Task names become parameter names (heads.<task>.dense.weight), so no dots and no clash
        # with the masked-token head.
        if not name or "." in name or name == MLM_TASK:
            problems.append(f"task name {name!r} is not allowed (empty, contains '.', or is {MLM_TASK!r})")
    if not (len(config.target_mean) == len(config.target_std) == len(tasks)):
        problems.append(
            f"target_mean ({len(config.target_mean)}) and target_std ({len(config.target_std)}) "
            f"need one value per task ({len(tasks)})"
        )
    if config.task_classes and len(config.task_classes) != len(tasks):
        problems.append(f"task_classes ({len(config.task_classes)}) needs one value per task ({len(tasks)})")
    bad_classes = [
        name
        for name, c in zip(tasks, config.task_classes)
        if isinstance(c, bool) or not isinstance(c, int) or c < 0 or c == 1
    ]
    if bad_classes:
        problems.append(f"task_classes must be 0 (regression) or a number of classes >= 2; it is not for {bad_classes}")
    bad_std = [name for name, std in zip(tasks, config.target_std) if not std > 0]
    if bad_std:
        problems.append(f"target_std must be positive; it is not for {bad_std}")
    if config.architecture == "multitask" and not tasks and not config.mlm_weight > 0:
        problems.append("a multitask model needs at least one task or mlm_weight > 0")
    return problems
