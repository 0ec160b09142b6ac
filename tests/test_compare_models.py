"""``ml-patterns compare --torch --jax --data`` and ``compare_models``: your own model pair, trained
through both Trainers from the same weights; and compare's settings flags (``--lr``, ``--seed``,
``--config``) for either workload."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap

import pytest

from ml_patterns.errors import UsageError
from ml_patterns_app.cli import build_parser, main
from ml_patterns_app.cli.compare_command import compare_settings
from ml_patterns_app.compare import compare_models
from ml_patterns_app.compare.report import AGREE, DISAGREE
from ml_patterns_app.compare.settings import CompareSettings

# A pair of the user's, not ours: an MLP [B, 4] -> [B] regressing sum(sin(x)), its NNX port, and a
# port with a bug (ReLU where torch has tanh), and one that cannot be mapped (another hidden width).
PAIR = """
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

HIDDEN, BATCH, BATCHES = 16, 16, 6


class TorchMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = nn.Linear(4, HIDDEN), nn.Linear(HIDDEN, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))[:, 0]

    def compute_loss(self, batch):
        return ((self(batch["x"]) - batch["y"]) ** 2).mean()


class NnxMLP(nnx.Module):
    def __init__(self, activation=nnx.tanh, hidden=HIDDEN):
        self.hidden, self.out = nnx.Linear(4, hidden, rngs=nnx.Rngs(0)), nnx.Linear(hidden, 1, rngs=nnx.Rngs(1))
        self.activation = activation

    def __call__(self, x):
        return self.out(self.activation(self.hidden(x)))[:, 0]

    def compute_loss(self, batch):
        return jnp.mean((self(batch["x"]) - batch["y"]) ** 2)


def torch_model():
    return TorchMLP()


def nnx_model():
    return NnxMLP()


def nnx_model_relu():
    return NnxMLP(nnx.relu)


def nnx_model_narrow():
    return NnxMLP(hidden=8)


def _batches(seed):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(BATCHES):
        x = rng.normal(size=(BATCH, 4)).astype(np.float32)
        batches.append({"x": x, "y": np.sin(x).sum(1).astype(np.float32)})
    return batches


def train_batches():
    return _batches(0)


def val_batches():
    return _batches(1)
"""
# One training step of the MLP, forward and backward (no gradient for the inputs): 2 FLOPs per
# multiply-add, matmuls only, as torch's FlopCounterMode counts them.
STEP_FLOPS = 2 * 16 * (4 * 16 + 16 * 1) + 2 * 16 * (4 * 16) + 2 * (2 * 16 * 16 * 1)
COMMON = ["--epochs", "3", "--threads", "1", "--device", "cpu", "--no-compile-cache"]


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    (folder / "mypair.py").write_text(textwrap.dedent(PAIR))
    return folder


@pytest.fixture
def in_pair_dir(pair_dir, monkeypatch):
    """The working directory holds mypair.py, importable as ``mypair`` (as a user's module would be)."""
    monkeypatch.chdir(pair_dir)
    monkeypatch.syspath_prepend(str(pair_dir))
    return pair_dir


@pytest.fixture(scope="module")
def agreeing_run(pair_dir, tmp_path_factory):
    """The one CLI run of the agreeing pair the tests below read: (exit status, printed, results)."""
    out = tmp_path_factory.mktemp("report") / "report"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pair_dir)
        capture = _Capture()
        patch.setattr(sys, "stdout", capture)
        status = main(
            [
                "compare",
                "--torch",
                "mypair:torch_model",
                "--jax",
                "mypair:nnx_model",
                "--data",
                "mypair:train_batches",
                "--val",
                "mypair:val_batches",
                "--out",
                str(out),
                *COMMON,
            ]
        )
    return status, capture.getvalue(), json.loads((out / "results.json").read_text()), out


class _Capture:
    """stdout for a module-scoped run (capsys is per test); not a terminal, as under pytest."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def isatty(self):
        return False

    def getvalue(self):
        return "".join(self.parts)


def test_your_pair_agrees_with_speed_and_memory_per_contender(agreeing_run):
    status, printed, results, out = agreeing_run
    assert status == 0
    assert results["parity"]["passed"] and AGREE in results["verdict"]
    steps = results["parity"]["steps"]
    assert steps["outcome"] == "agree" and steps["count"] == 3 * 6
    assert steps["losses"]["torch"] != steps["losses"]["ensemble"][0]  # the reruns one ulp off ran
    assert [row["epoch"] for row in results["parity"]["epochs"]] == [0, 1, 2]
    assert {"train_loss", "val_loss"} <= set(results["parity"]["epochs"][0])
    assert set(results["speed"]) == {"torch", "jax"}
    for run in ("torch", "jax"):
        speed = results["speed"][run]
        assert speed["steps_per_s"] > 0 and speed["samples_per_s"] == pytest.approx(16 * speed["steps_per_s"])
        assert speed["warmup_s"] is not None and speed["first_epoch_s"] > 0
        assert speed["peak_memory_bytes"] > 0 and speed["peak_memory_kind"]
        assert speed["flops_per_step"] == STEP_FLOPS and speed["gflop_per_s"] > 0
    assert results["speed"]["jax"]["compilations"] >= 2  # the train step and the eval step
    assert results["dataset"]["pair"]["torch"] == "mypair:torch_model"
    assert "Verdict: " in printed and "| JAX (jax.jit) |" in printed
    assert "Test split" not in printed  # your pair has no test metrics: no empty table
    assert (out / "speed.png").read_bytes()[:4] == b"\x89PNG"


def test_a_wrong_activation_in_the_nnx_port_disagrees(in_pair_dir, tmp_path):
    import mypair

    report = compare_models(
        mypair.torch_model,
        mypair.nnx_model_relu,
        mypair.train_batches,
        settings=CompareSettings(epochs=2, threads=1),
        out=tmp_path / "report",
        device="cpu",
    )
    assert not report["parity"]["passed"]
    assert report["parity"]["steps"]["outcome"] == "disagree" and DISAGREE in report["verdict"]
    assert report["parity"]["steps"]["first_outside"] == 0  # the very first loss differs
    assert "val_loss" not in report["parity"]["epochs"][0]  # no validation batches given


def test_runs_sharing_a_worker_process_give_what_each_gives_alone(in_pair_dir, tmp_path, capsys):
    """The verdict's untimed runs share one worker process (``launch.run_workers``): a run after the
    float64 anchor there (weights one ulp off, rounding noise each step) gives bit for bit what it
    gives in a process of its own."""
    import mypair
    import torch

    from ml_patterns.checkpoint import save_checkpoint
    from ml_patterns_app.compare.launch import run_worker, run_workers
    from ml_patterns_app.compare.pair import PairSpec
    from ml_patterns_app.compare.precision_runs import float32_settings
    from ml_patterns_app.compare.runner import one_ulp_weights
    from ml_patterns_app.compare.settings import WorkerJob
    from torch_impl import state

    torch.manual_seed(0)
    initial = save_checkpoint(
        tmp_path / "initial.safetensors",
        state.to_numpy(mypair.torch_model()),
        backend="torch",
        model_class="TorchMLP",
        config=None,
        versions={"torch": torch.__version__},
    )
    pair = PairSpec(torch="mypair:torch_model", jax="mypair:nnx_model", data="mypair:train_batches")
    settings = CompareSettings(epochs=2, threads=1)
    base = WorkerJob(data=pair.data, settings=settings, weights=str(initial), device="cpu", pair=pair.to_dict())
    anchor = dataclasses.replace(base, settings=float32_settings(settings), float64=True)
    moved = one_ulp_weights(initial, tmp_path / "one_ulp.safetensors", seed=1)
    rerun = dataclasses.replace(base, weights=str(moved), rounding_seed=1)
    first, after = run_workers(
        "torch", [(anchor, tmp_path / "anchor.json", "anchor"), (rerun, tmp_path / "rerun.json", "rerun")]
    )
    alone = run_worker("torch", rerun, tmp_path / "alone.json", "alone")
    for field in ("step_losses", "history", "weight_norms", "test_metrics"):
        assert getattr(after, field) == getattr(alone, field), field
    assert len(after.step_losses) == 2 * 6 and after.step_losses != first.step_losses  # both trained, differently
    printed = capsys.readouterr().out
    for label in ("anchor", "rerun", "alone"):  # each run its own status lines, as in a process of its own
        assert f"{label:<16} epoch 2/2  train_loss " in printed and f"{label:<16} done" in printed


def test_an_unmappable_pair_stops_with_the_mapping_table_before_training(in_pair_dir, tmp_path, capsys):
    out = tmp_path / "report"
    status = main(
        ["compare", "--torch", "mypair:torch_model", "--jax", "mypair:nnx_model_narrow"]
        + ["--data", "mypair:train_batches", "--out", str(out), *COMMON]
    )
    captured = capsys.readouterr()
    assert status == 2
    assert "do not map onto --jax mypair:nnx_model_narrow" in captured.err and "nothing was trained" in captured.err
    assert "hidden" in captured.out and "shape" in captured.out  # the toolkit's table, printed above
    assert "PyTorch (eager)" not in captured.out and not out.exists()  # no worker started, no report


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--torch", "mypair:torch_model"], "--torch and --jax go together"),
        (["--torch", "mypair:torch_model", "--jax", "mypair:nnx_model"], "need --data MODULE:FACTORY"),
        (
            ["--torch", "mypair:torch_model", "--jax", "mypair:nnx_model", "--data", "mypair:x", "--batch-size", "8"],
            "--batch-size: the molecule workload's, not for --torch/--jax",
        ),
        (["--val", "mypair:val_batches"], "--val go(es) with --torch and --jax"),
        (["--contenders", "eager"], "must hold eager and jit"),
        (["--contenders", "eager,jit,xla"], "unknown ['xla']"),
    ],
)
def test_compare_flags_that_do_not_fit_are_refused(in_pair_dir, tmp_path, capsys, argv, message):
    assert main(["compare", *argv, "--out", str(tmp_path / "r"), "--no-compile-cache"]) == 2
    assert message in capsys.readouterr().err


def test_lr_seed_and_config_make_the_settings_flags_first(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"d_model": 32, "n_heads": 2, "learning_rate": 0.01, "seed": 4, "optimizer_name": "sgd"})
    )
    args = build_parser().parse_args(["compare", "--config", str(config), "--lr", "3e-4", "--epochs", "5"])
    settings = compare_settings(args)
    assert (settings.d_model, settings.n_heads, settings.seed, settings.optimizer_name) == (32, 2, 4, "sgd")
    assert (settings.learning_rate, settings.epochs) == (3e-4, 5)  # the flags override the file
    args = build_parser().parse_args(["compare", "--seed", "7", "--optimizer", "adam", "--weight-decay", "0"])
    settings = compare_settings(args)
    assert (settings.seed, settings.optimizer_name, settings.weight_decay) == (7, "adam", 0)
    assert settings.optimizer(10).name == "adam"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"d_modle": 32}, "unknown key(s) ['d_modle']; accepted: model, epochs"),
        ({"learning_rate": "fast"}, "learning_rate must be float, got 'fast'"),
        ({"learning_rate": -1.0}, "learning_rate must be a positive finite number, got -1.0"),
        ({"d_model": 30, "n_heads": 4}, "d_model (30) must be a multiple of n_heads (4)"),
        ({"optimizer_name": "adam"}, "adam has no weight decay"),
        ({"warmup_fraction": 1.5}, "warmup_fraction must be in [0, 1)"),
        ([1, 2], "expected a JSON object of settings, got list"),
    ],
)
def test_a_bad_config_is_named_and_explained(tmp_path, content, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(content))
    args = build_parser().parse_args(["compare", "--config", str(config)])
    with pytest.raises(UsageError, match="--config .*config.json") as error:
        compare_settings(args)
    assert message in str(error.value)


def test_a_bad_flag_value_is_explained(capsys, tmp_path):
    assert main(["compare", "--lr", "0", "--out", str(tmp_path / "r"), "--no-compile-cache"]) == 2
    assert "learning_rate must be a positive finite number, got 0.0" in capsys.readouterr().err


BAD_BATCHES = """
import numpy as np


def used_up():
    return ({"x": np.zeros((2, 4), np.float32)} for _ in range(3))


def tuples():
    return [(np.zeros((2, 4), np.float32),)]


def lists():
    return [{"x": [[0.0] * 4] * 2}]


def nothing():
    return []


def not_iterable():
    return 3
"""


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("used_up", "a second pass gives another number of batches"),
        ("tuples", "batch 0 is a tuple, not a dict of numpy arrays"),
        ("lists", "batch 0['x'] is a list, not a numpy array"),
        ("nothing", "yielded no batch"),
        ("not_iterable", "returned a int; return an iterable of batches"),
    ],
)
def test_batches_that_cannot_train_are_named_before_training(in_pair_dir, name, message):
    from ml_patterns_app.compare.pair import Batches

    (in_pair_dir / "badbatches.py").write_text(BAD_BATCHES)
    with pytest.raises(UsageError, match=f"--data 'badbatches:{name}'") as error:
        Batches(f"badbatches:{name}", "--data").scan()
    assert message in str(error.value)


def test_the_command_checks_your_batches_before_any_worker(in_pair_dir, tmp_path, capsys):
    (in_pair_dir / "badbatches.py").write_text(BAD_BATCHES)
    out = tmp_path / "report"
    status = main(
        ["compare", "--torch", "mypair:torch_model", "--jax", "mypair:nnx_model"]
        + ["--data", "badbatches:used_up", "--out", str(out), *COMMON]
    )
    captured = capsys.readouterr()
    assert status == 2 and "a second pass gives another number of batches" in captured.err
    assert "PyTorch (eager)" not in captured.out and not out.exists()
