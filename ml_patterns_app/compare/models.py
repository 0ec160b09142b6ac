"""``compare_models``: ``ml-patterns compare`` on your own model pair, from Python."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ml_patterns_app.compare.pair import PairSpec, spec_of
from ml_patterns_app.compare.runner import compare
from ml_patterns_app.compare.settings import DEFAULT_CONTENDERS, CompareSettings

Importable = str | Callable


def compare_models(
    torch_model: Importable,
    nnx_model: Importable,
    train_batches: Importable,
    val_batches: Importable | None = None,
    *,
    torch_loss: Importable | None = None,
    jax_loss: Importable | None = None,
    settings: CompareSettings | None = None,
    contenders: Sequence[str] = DEFAULT_CONTENDERS,
    rules: Sequence[str] = (),
    pairs: Mapping[str, str] | None = None,
    ignore: Sequence[str] = (),
    out: str | Path = "runs/compare",
    device: str = "auto",
    compile_cache: str | Path | None = None,
) -> dict:
    """Trains your torch model and its NNX port through the Trainers from the same weights on the
    same batches, judges their agreement against the measured float32 noise and times them; writes
    the report into ``out`` and returns it (``results.json``'s content: ``report["verdict"]``,
    ``report["parity"]["passed"]``, ``report["speed"][run]``...).

    Every training run is a process of its own (so its time and memory are its own), which imports
    what it trains: pass functions defined at a module's top level (or ``"MODULE:NAME"`` texts; a
    script's own functions are found by its file), never the objects themselves.

    Args:
        torch_model, nnx_model: functions without arguments returning a ``torch.nn.Module`` and an
            ``nnx.Module``, each with ``compute_loss(batch) -> scalar`` unless ``torch_loss`` /
            ``jax_loss`` (``loss(model, batch) -> scalar``) is given. The torch model is built with
            ``torch.manual_seed(settings.seed)``; its weights are transferred to the NNX model
            (``ml_patterns_app.porting.transfer_weights`` with ``rules`` (``"MODULE:NAME"`` of a
            ``Rule`` or a list of them), ``pairs`` and ``ignore``); a pair that does not map raises
            ``UsageError`` after printing the mapping table, before any training.
        train_batches, val_batches: functions returning an iterable of batches, dicts of numpy
            arrays (leading dimension: samples), iterated once per epoch, the same on every call.
        settings: (default ``CompareSettings()``) epochs, optimizer (``optimizer_name``,
            ``learning_rate``, ``weight_decay``, ``clip_grad_norm``, ``warmup_fraction``: linear
            warmup, then cosine decay), ``seed``, ``threads``, ``floor_runs`` (its model sizes are
            the molecule model's, unused here).
        contenders: ``"eager"`` and ``"jit"`` (judged for agreement), and ``"compile"`` for
            torch.compile (timed apart, judged against eager torch too).
        device: ``"auto"``, ``"cpu"`` or ``"gpu"``; ``compile_cache``: JAX's persistent cache.
    """
    spec = PairSpec(
        torch=spec_of(torch_model, "torch_model"),
        jax=spec_of(nnx_model, "nnx_model"),
        data=spec_of(train_batches, "train_batches"),
        val=spec_of(val_batches, "val_batches"),
        torch_loss=spec_of(torch_loss, "torch_loss"),
        jax_loss=spec_of(jax_loss, "jax_loss"),
        rules=tuple(rules),
        pairs=dict(pairs or {}),
        ignore=tuple(ignore),
    )
    settings = CompareSettings() if settings is None else settings
    cache = None if compile_cache is None else Path(compile_cache)
    return compare(settings, None, Path(out), device, 1, cache, pair=spec, contenders=contenders)
