"""Data parallelism: the core's shards and reductions (pure functions, tables), and each backend's
step on one rank/device in this process. N ranks against one: parity_tests/test_distributed.py."""

from __future__ import annotations

import dataclasses
import math
import socket
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.distributed as dist
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import jax_impl.distributed
import jax_impl.training
import torch_impl.distributed
import torch_impl.training
from ml_patterns.callbacks import EarlyStopping, HistoryLogger, ModelCheckpoint
from ml_patterns.distributed import (
    ddp_objective,
    global_layout,
    global_mean,
    global_rows,
    rank_rows,
    shard,
    shard_sizes,
    take_rows,
)
from ml_patterns.history import History
from ml_patterns.optim import OptimizerConfig
from parity_tests import distributed_runs


def numpy_divide(total, count):
    return total / np.where(count > 0, count, 1.0)


# -- the core: shards -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("indices", "world_size", "expected"),
    [
        ([10, 11, 12, 13], 2, [([10, 11], [1, 1]), ([12, 13], [1, 1])]),
        ([10, 11, 12, 13, 14], 2, [([10, 11, 12], [1, 1, 1]), ([13, 14, 10], [1, 1, 0])]),
        ([10, 11, 12, 13, 14], 4, [([10, 11], [1, 1]), ([12, 10], [1, 0]), ([13, 10], [1, 0]), ([14, 10], [1, 0])]),
        ([7], 3, [([7], [1]), ([7], [0]), ([7], [0])]),
        ([5, 6, 7], 1, [([5, 6, 7], [1, 1, 1])]),
    ],
)
def test_shard_table(indices, world_size, expected):
    for rank, (rows, weight) in enumerate(expected):
        part = shard(indices, world_size, rank)
        assert part.indices == rows and part.weight.tolist() == weight and part.weight.dtype == np.float32


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=60, unique=True), st.integers(1, 9))
def test_shards_cover_the_batch_once_in_order(indices, world_size):
    parts = [shard(indices, world_size, rank) for rank in range(world_size)]
    real = [i for p in parts for i, w in zip(p.indices, p.weight) if w == 1.0]
    assert real == indices  # every sample once, none twice, in the sampler's order
    assert {len(p.indices) for p in parts} == {math.ceil(len(indices) / world_size)}
    assert [p.real for p in parts] == shard_sizes(len(indices), world_size)
    layout = global_layout(indices, world_size)
    assert layout.indices == [i for p in parts for i in p.indices]
    np.testing.assert_array_equal(layout.weight, np.concatenate([p.weight for p in parts]))


@pytest.mark.parametrize(
    ("indices", "world_size", "rows", "expected"),
    [
        ([10, 11, 12], 1, 5, [([10, 11, 12, 10, 10], [1, 1, 1, 0, 0])]),
        ([10, 11, 12], 1, 3, [([10, 11, 12], [1, 1, 1])]),
        ([10, 11, 12, 13, 14], 2, 4, [([10, 11, 12, 10], [1, 1, 1, 0]), ([13, 14, 10, 10], [1, 1, 0, 0])]),
    ],
)
def test_shards_padded_to_a_fixed_number_of_rows(indices, world_size, rows, expected):
    """What ``pad_batches_to`` builds: a short batch in the rows of a full one."""
    for rank, (want, weight) in enumerate(expected):
        part = shard(indices, world_size, rank, rows)
        assert part.indices == want and part.weight.tolist() == weight
    layout = global_layout(indices, world_size, rows)
    assert len(layout.indices) == world_size * rows and layout.real == len(indices)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([1, 2, 3], 1, 0, 2), ValueError, "a batch of 3 samples over 1 rank.s. needs 3 rows per rank, 2 asked"),
        (([], 2, 0), ValueError, "empty batch"),
        (([1, 2], 0, 0), ValueError, "world_size must be a positive int"),
        (([1, 2], 2, 2), ValueError, r"rank must be an int in \[0, 2\)"),
        (([1, 2], 2, -1), ValueError, "rank must be"),
        (([1, 2], True, 0), ValueError, "world_size"),
    ],
)
def test_shard_refuses_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        shard(*args)


def test_rows_of_a_collated_batch_per_rank_and_for_the_mesh():
    batch = {"x": np.arange(10).reshape(5, 2), "nested": (torch.arange(5),), "name": "kept as is"}
    rows, weight = rank_rows(batch, 5, 2, 1)
    assert rows["x"].tolist() == [[6, 7], [8, 9], [0, 1]] and rows["nested"][0].tolist() == [3, 4, 0]
    assert rows["name"] == "kept as is" and weight.tolist() == [1, 1, 0]
    rows, weight = global_rows(batch, 5, 4)
    assert rows["nested"][0].tolist() == [0, 1, 2, 0, 3, 0, 4, 0] and weight.tolist() == [1, 1, 1, 0, 1, 0, 1, 0]
    assert take_rows(batch, [4])["x"].tolist() == [[8, 9]]


# -- the core: sums and counts --------------------------------------------------------------------
def test_mean_of_ddp_objectives_is_the_global_mean_and_per_rank_means_are_not():
    """Per rank (S_tokens, C_tokens), (S_rows, C_rows): ranks with unequal token counts."""
    ranks = [
        {"tokens": (np.float64(6.0), np.float64(3.0)), "rows": (np.float64(1.0), np.float64(2.0))},
        {"tokens": (np.float64(3.0), np.float64(1.0)), "rows": (np.float64(5.0), np.float64(2.0))},
    ]
    totals = {k: (sum(r[k][0] for r in ranks), sum(r[k][1] for r in ranks)) for k in ranks[0]}
    expected = 9.0 / 4.0 + 6.0 / 4.0
    assert global_mean(totals, numpy_divide) == expected
    counts = {k: c for k, (_, c) in totals.items()}
    # DDP averages the ranks' gradients; ddp_objective is linear in the local sums, so the same
    # average of the objectives themselves must give the global mean.
    objectives = [ddp_objective(r, counts, len(ranks), numpy_divide) for r in ranks]
    assert np.mean(objectives) == expected
    per_rank_means = np.mean([global_mean(r, numpy_divide) for r in ranks])
    assert per_rank_means == (6.0 / 3.0 + 1.0 / 2.0 + 3.0 / 1.0 + 5.0 / 2.0) / 2 != expected


def test_a_part_with_no_count_adds_nothing():
    assert (
        global_mean({"a": (np.float64(3.0), np.float64(2.0)), "b": (np.float64(0.0), np.float64(0.0))}, numpy_divide)
        == 1.5
    )


def test_reductions_refuse_mismatched_parts():
    with pytest.raises(ValueError, match="loss_sums returned no part"):
        global_mean({}, numpy_divide)
    with pytest.raises(KeyError, match=r"parts \['b'\] are not in both"):
        ddp_objective({"a": (1.0, 1.0), "b": (1.0, 1.0)}, {"a": 2.0}, 2, numpy_divide)


# -- torch: one rank in this process --------------------------------------------------------------
@pytest.fixture
def one_rank_group():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield torch_impl.distributed.setup()
    finally:
        torch_impl.distributed.teardown()


def test_torch_step_on_one_rank_is_the_plain_step(one_rank_group):
    from torch_impl.losses import masked_cross_entropy

    assert (one_rank_group.world_size, one_rank_group.rank, one_rank_group.is_main) == (1, 0, True)
    data, _ = distributed_runs.problem()
    part = shard([0, 5, 9], 1, 0)
    batch = {k: torch.from_numpy(v[part.indices]) for k, v in data.items()}
    plain, parallel = distributed_runs.torch_model(), distributed_runs.torch_model()
    loss = masked_cross_entropy(plain(batch["x"]), batch["y"], batch["mask"])
    loss.backward()
    expected = float(loss.detach())
    torch.optim.SGD(plain.parameters(), lr=0.1).step()
    evaluate = torch_impl.distributed.make_eval_step(parallel)
    np.testing.assert_allclose(float(evaluate(batch, torch.from_numpy(part.weight))), expected, rtol=1e-6)
    step = torch_impl.distributed.make_train_step(
        parallel, torch.optim.SGD(parallel.parameters(), lr=0.1), one_rank_group
    )
    loss = step(batch, torch.from_numpy(part.weight))
    assert not loss.requires_grad
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    for (name, a), b in zip(plain.state_dict().items(), parallel.state_dict().values()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def test_torch_setup_without_a_launcher_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"torchrun --nproc-per-node N.*launch\(fn, N\)"):
        torch_impl.distributed.setup()


@pytest.mark.parametrize("module", [torch_impl.distributed, jax_impl.distributed], ids=["torch", "jax"])
def test_safe_divide_is_zero_and_finite_at_count_zero(module):
    """A part with no count (every token masked) adds 0, and no NaN reaches the gradients."""
    for count, expected in ((0.0, 0.0), (4.0, 0.75)):
        if module is torch_impl.distributed:
            total = torch.tensor(3.0 if count else 0.0, requires_grad=True)
            value = module.safe_divide(total, torch.tensor(count))
            value.backward()
            value, grad = float(value.detach()), float(total.grad)
        else:
            value, grad = jax.value_and_grad(lambda t, c=count: module.safe_divide(t, jnp.float32(c)))(
                jnp.float32(3.0 if count else 0.0)
            )
        assert float(value) == expected and np.isfinite(grad)


# -- one device in this process -------------------------------------------------------------------
TRAINERS = {"torch": distributed_runs.torch_trainer, "jax": distributed_runs.jax_trainer}


def assert_trains_as_the_plain_trainer(other, epochs: int, backend: str = "jax"):
    """``other`` (a ``TRAINERS[backend]`` pair) trained for ``epochs``: the plain one-device
    trainer's losses and weights. Returns the plain trainer."""
    plain, plain_params = TRAINERS[backend]()
    expected, actual = (distributed_runs.fit(t, p, epochs=epochs) for t, p in ((plain, plain_params), other))
    for key in ("step_loss", "train_loss", "val_loss"):
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-6, err_msg=key)
    for name, value in expected["params"].items():
        np.testing.assert_allclose(actual["params"][name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    return plain


def test_jax_trainer_on_a_one_device_mesh_is_the_plain_trainer():
    context = jax_impl.distributed.setup(jax.devices()[:1])
    assert (context.world_size, context.rank, context.is_main) == (1, 0, True)
    assert_trains_as_the_plain_trainer(distributed_runs.jax_trainer(context), epochs=1)


def test_jax_trainer_padding_batches_trains_as_the_batches_themselves():
    """37 samples in batches of 8, 21 for validation: the short batches (5 rows) padded to 8 give the
    same losses and weights, and compile nothing of their own (3 programs against 5)."""
    padded = distributed_runs.jax_trainer(pad_batches_to=distributed_runs.BATCH)
    plain = assert_trains_as_the_plain_trainer(padded, epochs=2)
    assert (padded[0].compilations(), plain.compilations()) == (3, 5)


def test_torch_trainer_padding_batches_trains_as_the_batches_themselves():
    """The same option on torch: the short batches padded with weight-0 rows, the loss from
    ``loss_sums`` over the real rows, train as the batches themselves."""
    padded = distributed_runs.torch_trainer(pad_batches_to=distributed_runs.BATCH)
    assert_trains_as_the_plain_trainer(padded, epochs=2, backend="torch")
    assert padded[0].weighted_rows


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize(
    ("pad", "error", "match"),
    [
        (0, ValueError, "pad_batches_to must be a positive int .the batch size. or None, got 0"),
        (True, ValueError, "pad_batches_to must be a positive int"),
        (8.0, ValueError, "pad_batches_to must be a positive int"),
    ],
)
def test_a_trainer_refuses_a_bad_pad_batches_to(backend, pad, error, match):
    with pytest.raises(error, match=match):
        TRAINERS[backend](pad_batches_to=pad)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_trainer_refuses_loaders_larger_than_it_pads_to_before_training(backend):
    trainer, _ = TRAINERS[backend](pad_batches_to=8)
    train, val = distributed_runs.loaders(val_batch=16)
    with pytest.raises(
        ValueError, match="the val loader's batches hold up to 16 samples, more than pad_batches_to=8: set"
    ):
        trainer.fit(train, val, 1)
    assert trainer.optimizer_step == 0  # refused before the first step, not after an epoch
    with pytest.raises(ValueError, match="the evaluation loader's batches hold up to 16 samples"):
        trainer.evaluate(val)
    # A loader without a known sampler: each batch is checked as it comes.
    with pytest.raises(ValueError, match="a batch of 16 rows is larger than pad_batches_to=8: set pad_batches_to to"):
        trainer.evaluate(list(val))


def test_jax_shard_batch_names_an_array_that_cannot_split():
    context = jax_impl.distributed.setup(jax.devices()[:1])
    with pytest.raises(ValueError, match=r"batch\['count'\] has shape \(\): its leading axis must divide by the 1"):
        jax_impl.distributed.shard_batch({"x": np.zeros((2, 3)), "count": np.float32(2)}, context)


def test_jax_trainer_refuses_a_device_beside_a_mesh():
    context = jax_impl.distributed.setup(jax.devices()[:1])
    with pytest.raises(ValueError, match="the mesh names the devices, leave device out"):
        jax_impl.training.Trainer(
            distributed_runs.jax_model(), distributed_runs.OPTIMIZER, device="cpu", distributed=context
        )


# -- both trainers: what data parallelism needs, and rank 0's side effects ------------------------
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_model_without_loss_sums_cannot_train_data_parallel(backend):
    if backend == "torch":
        model = torch.nn.Linear(2, 2)
        context = torch_impl.distributed.Context(world_size=1, rank=0, device=torch.device("cpu"))
        build = torch_impl.training.Trainer
    else:
        model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        context, build = jax_impl.distributed.setup(jax.devices()[:1]), jax_impl.training.Trainer
    with pytest.raises(TypeError, match=r"Linear has no loss_sums\(batch, weight\)"):
        build(model, OptimizerConfig("sgd", learning_rate=0.1), distributed=context)


def test_a_model_without_loss_sums_cannot_pad_batches():
    """One device, but padding rows need the weighted loss too."""
    with pytest.raises(TypeError, match=r"Linear has no loss_sums\(batch, weight\).*, which padding rows need"):
        jax_impl.training.Trainer(
            nnx.Linear(2, 2, rngs=nnx.Rngs(0)), OptimizerConfig("sgd", learning_rate=0.1), pad_batches_to=8
        )


class NotMain:
    """What a callback sees on rank 1: ``is_main`` False; ``save_checkpoint`` records its calls."""

    is_main = False
    should_stop = False
    stop_reason = None

    def __init__(self):
        self.history, self.saved = History(), []
        self.history.append(0, {"val_loss": 1.0})

    def save_checkpoint(self, path) -> None:
        self.saved.append(Path(path))


def test_callbacks_leave_files_and_output_to_rank_0(tmp_path, capsys):
    trainer = NotMain()
    checkpoints = ModelCheckpoint(tmp_path / "ckpt", save_best_only=False, save_last=True)
    callbacks = [checkpoints, HistoryLogger(tmp_path / "history"), EarlyStopping(patience=0, verbose=True)]
    for epoch, loss in enumerate((1.0, 2.0)):
        for callback in callbacks:
            callback.on_epoch_end(epoch, trainer, {"val_loss": loss})
    # Every rank runs the callbacks (the same decisions everywhere); only rank 0 touches disk or prints.
    assert trainer.should_stop and len(trainer.saved) == 4
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""


# -- the molecule models' sums and counts --------------------------------------------------------
@pytest.mark.parametrize("architecture", ["multitask", "autoencoder"])
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_molecule_loss_sums_give_the_loss_of_the_real_rows(default_dataset, backend, architecture):
    """``global_mean(loss_sums(batch, weight))`` is ``compute_loss`` of the rows of weight 1 alone:
    the padding rows a shard carries change nothing."""
    import importlib

    from ml_patterns.data import LazyDataset
    from ml_patterns.molecules.batches import BatchPreparer

    impl = importlib.import_module(f"{backend}_impl")
    for module in ("collate", "molecules.models"):
        importlib.import_module(f"{backend}_impl.{module}")
    data, _ = default_dataset
    config = dataclasses.replace(distributed_runs.molecule_config(data), architecture=architecture)
    model = impl.molecules.models.build_model(config)
    model.eval()
    records = [LazyDataset(data, split="train")[i] for i in range(5)]
    # The transform first, then the rows (as the trainers do): the token masks drawn are the batch's.
    padded = BatchPreparer(config)(
        impl.collate.collate_molecules(records + records[:1], max_length=64), 0, 0, train=False
    )
    real = take_rows(padded, range(5))
    weight = np.array([1, 1, 1, 1, 1, 0], np.float32)
    if backend == "torch":
        to, divide = (lambda a: torch_impl.training.to_device(a, "cpu")), torch_impl.distributed.safe_divide
        compute_loss, loss_sums = type(model).compute_loss, type(model).loss_sums
    else:
        to, divide = jax.device_put, jax_impl.distributed.safe_divide
        # Jitted, as the trainer runs them: one program each instead of every op compiled eagerly.
        compute_loss = nnx.jit(lambda m, b: m.compute_loss(b))
        loss_sums = nnx.jit(lambda m, b, w: m.loss_sums(b, w))
    expected = np.asarray(compute_loss(model, to(real)).tolist())
    actual = np.asarray(global_mean(loss_sums(model, to(padded), to(weight)), divide).tolist())
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_bench_scaling_efficiency_is_against_n_times_one_worker():
    from ml_patterns_bench.distributed import scaling_rows

    measured = {1: {"epoch_s": [2.0, 2.0], "samples": 64}, 2: {"epoch_s": [1.25, 1.25], "samples": 64}}
    rows = scaling_rows("w", "torch eager", measured)
    assert [row["world_size"] for row in rows] == [1, 2]
    assert [row["scaling_efficiency"] for row in rows] == [1.0, 0.8]  # 32 -> 51.2 samples/s: 0.8 of 2 x 32
    assert rows[1]["throughput"] == {"value": 51.2, "unit": "samples/s"}


def test_compare_checks_each_backend_against_its_one_device_run():
    from ml_patterns_app.compare.report import add_one_device_parity
    from ml_patterns_app.compare.settings import WorkerResult

    def result(losses: list[float], devices: int, train_s: list[float]) -> WorkerResult:
        return WorkerResult(
            history={"train_loss": losses, "val_loss": losses},
            devices=devices,
            epoch_times=[{"train_s": s, "val_s": 0.5} for s in train_s],
            steps_per_epoch=4,
            samples_per_epoch=64,
            peak_memory_bytes=2**20,
            peak_memory_kind="process peak RSS",
        )

    one = result([2.0, 1.0], 1, [3.0, 2.0, 2.0])
    runs = {
        "torch": (one, result([2.0, 1.00005], 2, [3.0, 1.25, 1.25])),
        "jax": (one, result([2.0, 1.01], 2, [3.0] * 3)),
    }
    report = {"device_kind": "cpu", "parity": {"passed": True}, "verdict": "They agree."}
    add_one_device_parity(report, runs)
    torch_check, jax_check = report["against_one_device"]["torch"], report["against_one_device"]["jax"]
    assert torch_check["pass"] and torch_check["scaling_efficiency"] == 0.8  # 32 -> 51.2 samples/s on 2
    assert not jax_check["pass"] and jax_check["max_rel_diff"] == pytest.approx(0.01)  # beyond rtol 1e-4
    assert not report["parity"]["passed"] and report["verdict"].endswith("DIFFERENTLY from one device (see the table).")
