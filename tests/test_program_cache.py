"""jax_impl.program_cache: traced programs kept across runs. A later run (a fresh ProgramCache on the
same directory) must run the stored program without tracing, give the same bits, and never serve a
program that tracing would now make differently: other code, context, configuration or shapes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jax_impl.program_cache
import jax_impl.training
from jax_impl.program_cache import ProgramCache
from ml_patterns.errors import UsageError
from ml_patterns.optim import OptimizerConfig

SCALAR = jax.tree.structure(0)


@pytest.fixture
def traces(monkeypatch):
    """The programs the cache traced (exported), by name: jax.jit's own in-process trace cache
    would hide a second trace from a count kept in the traced function."""
    traced = []
    export = jax_impl.program_cache.export.export

    def counting(fun_jit, **kwargs):
        traced.append(fun_jit)
        return export(fun_jit, **kwargs)

    monkeypatch.setattr(jax_impl.program_cache.export, "export", counting)
    return traced


def affine(x, y):
    return jnp.sum(jnp.tanh(x @ y) * 3.0)


def inputs(n=4):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(n, 3)), jnp.float32), jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)


def test_a_later_run_reads_the_program_back_instead_of_tracing(tmp_path, traces):
    jitted = jax.jit(affine)
    first = ProgramCache(tmp_path).program(jitted, "affine", context="v1", out_tree=lambda args: SCALAR)
    expected = jax.jit(affine)(*inputs())
    assert np.asarray(first(*inputs())).tobytes() == np.asarray(expected).tobytes() and len(traces) == 1
    assert len(list(tmp_path.glob("affine-*.jaxprogram"))) == 1  # one file: program and manifest together

    later = ProgramCache(tmp_path).program(jitted, "affine", context="v1", out_tree=lambda args: SCALAR)
    assert np.asarray(later(*inputs())).tobytes() == np.asarray(expected).tobytes()
    assert len(traces) == 1 and later.compilations() == 1  # read back, not traced
    later(*inputs(5))  # another shape: its own program, traced and stored
    assert len(traces) == 2 and later.compilations() == 2 and len(list(tmp_path.glob("*.jaxprogram"))) == 2


def test_what_the_function_closes_over_and_jax_configuration_are_in_the_key(tmp_path, traces):
    jitted = jax.jit(affine)
    ProgramCache(tmp_path).program(jitted, "affine", context="v1", out_tree=lambda args: SCALAR)(*inputs())
    ProgramCache(tmp_path).program(jitted, "affine", context="v2", out_tree=lambda args: SCALAR)(*inputs())
    assert len(traces) == 2  # another context: traced again
    saved = jax.config.jax_default_matmul_precision
    try:
        jax.config.update("jax_default_matmul_precision", "bfloat16")
        ProgramCache(tmp_path).program(jitted, "affine", context="v1", out_tree=lambda args: SCALAR)(*inputs())
    finally:
        jax.config.update("jax_default_matmul_precision", saved)
    assert len(traces) == 3 and len(list(tmp_path.glob("*.jaxprogram"))) == 3  # another precision: another program


def write_module(path, text, age_s):
    """``path`` with ``text``, dated ``age_s`` seconds ago: as if written before this process began."""
    path.write_text(text)
    past = time.time() - age_s
    os.utime(path, (past, past))


def test_an_edited_module_is_traced_again(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    module_file = source / "scaled_for_program_cache.py"
    write_module(module_file, "def scale(x):\n    return x * 2.0\n", age_s=7200)
    monkeypatch.syspath_prepend(str(source))
    module = importlib.import_module("scaled_for_program_cache")
    cache = tmp_path / "cache"
    try:

        def run(name="scale", shift=0.0):
            jitted = jax.jit(lambda x: module.scale(x) + shift)
            program = ProgramCache(cache).program(jitted, name, context="", out_tree=lambda a: SCALAR)
            return float(program(jnp.float32(1.5)))

        assert run() == 3.0 and len(list(cache.glob("*.jaxprogram"))) == 1
        write_module(module_file, "def scale(x):\n    return x * 3.0  # edited\n", age_s=3600)
        importlib.reload(module)
        assert run() == 4.5  # not the stored program of the old source
        assert len(list(cache.glob("*.jaxprogram"))) == 1  # the entry was replaced

        # Edited while this process runs, after its import: what is traced is the loaded (old) code,
        # which must not be stored under the new file's date.
        module_file.write_text("def scale(x):\n    return x * 5.0  # edited again, not reloaded\n")
        # Nor served what a process started after the edit stored: the new code's program.
        with monkeypatch.context() as later_process:
            later_process.setattr(jax_impl.program_cache, "_process_start_ns", lambda: time.time_ns() + 10**10)
            new_code = jax.jit(lambda x: x * 5.0 + 1.0)
            ProgramCache(cache).program(new_code, "shifted", context="", out_tree=lambda a: SCALAR)(jnp.float32(1.5))
        (stored,) = cache.glob("shifted-*")
        with pytest.warns(UserWarning, match="not kept in the program cache: .*scaled_for_program_cache.py changed"):
            assert run("shifted", 1.0) == 5.5  # this process's code: 1.5 * 3 + 1, not the entry's 8.5
        assert list(cache.glob("shifted-*")) == [stored]
    finally:
        sys.modules.pop("scaled_for_program_cache", None)


def test_a_damaged_entry_is_traced_again_with_a_warning(tmp_path, traces):
    jitted = jax.jit(affine)
    ProgramCache(tmp_path).program(jitted, "affine", context="", out_tree=lambda args: SCALAR)(*inputs())
    (program_file,) = tmp_path.glob("*.jaxprogram")
    program_file.write_bytes(program_file.read_bytes()[:-100])
    later = ProgramCache(tmp_path).program(jitted, "affine", context="", out_tree=lambda args: SCALAR)
    with pytest.warns(UserWarning, match=r"unreadable program cache entry .*affine-.*\.jaxprogram.*tracing again"):
        result = later(*inputs())
    assert float(result) == float(jax.jit(affine)(*inputs())) and len(traces) == 2
    assert ProgramCache(tmp_path).load(program_file.stem) is not None  # rewritten whole


def test_donated_arguments_are_donated(tmp_path):
    program = ProgramCache(tmp_path).program(
        jax.jit(lambda a, b: (a + b, b)),
        "add",
        context="",
        out_tree=lambda args: jax.tree.structure(args),
        donate_argnums=(0,),
    )
    a, b = jnp.ones(3), jnp.full(3, 2.0)
    total, same = program(a, b)
    assert a.is_deleted() and not b.is_deleted()
    assert total.tolist() == [3.0, 3.0, 3.0] and same.tolist() == [2.0, 2.0, 2.0]


def test_what_cannot_be_kept_runs_as_plain_jit(tmp_path, capfd):
    def printing(x):
        jax.debug.print("x={x}", x=x)  # a host callback: jax.export cannot serialize it
        return x * 2.0

    program = ProgramCache(tmp_path).program(jax.jit(printing), "printing", context="", out_tree=lambda a: SCALAR)
    with pytest.warns(UserWarning, match="printing not kept in the program cache .*plain jax.jit"):
        assert float(program(jnp.float32(2.0))) == 4.0
    assert "x=2" in capfd.readouterr().out and not any(tmp_path.iterdir())
    # A result shaped otherwise than declared (say, a call that adds state).
    pair = ProgramCache(tmp_path).program(jax.jit(lambda a: (a, a)), "pair", context="", out_tree=lambda a: SCALAR)
    with pytest.warns(UserWarning, match="pair not kept in the program cache .*out_tree says"):
        assert [float(v) for v in pair(jnp.float32(1.0))] == [1.0, 1.0]
    assert not any(tmp_path.iterdir())
    # A Python number is traced as jax.jit traces it (a weakly typed scalar), and kept.
    number = ProgramCache(tmp_path).program(jax.jit(lambda a: a + 1), "number", context="", out_tree=lambda a: SCALAR)
    assert float(number(2.0)) == 3.0 and float(number(5.0)) == 6.0 and number.compilations() == 1
    assert len(list(tmp_path.glob("number-*.jaxprogram"))) == 1


def test_a_directory_others_may_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UsageError, match=r"the program cache .*shared is writable by another user"):
        ProgramCache(shared)
    assert ProgramCache(tmp_path / "mine").directory.stat().st_mode & 0o777 == 0o700


# -- the Trainer's steps ------------------------------------------------------------------------
class Regressor(nnx.Module):
    def __init__(self, hidden=8):
        rngs = nnx.Rngs(0)
        self.hidden, self.out = nnx.Linear(4, hidden, rngs=rngs), nnx.Linear(hidden, 1, rngs=rngs)

    def compute_loss(self, batch):
        return jnp.mean((self.out(jnp.tanh(self.hidden(batch["x"])))[:, 0] - batch["y"]) ** 2)


def batches(sizes=(16, 16, 8)):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(sum(sizes), 4)).astype(np.float32)
    bounds = np.cumsum((0, *sizes))
    return [{"x": x[a:b], "y": np.sin(x[a:b].sum(axis=1))} for a, b in zip(bounds[:-1], bounds[1:])]


# A learning rate no other test uses: trainers of the same model, optimizer and seed share their steps.
OPTIMIZER = OptimizerConfig("adamw", learning_rate=0.0123, weight_decay=0.01)


def fit(program_cache, optimizer=OPTIMIZER, hidden=8):
    trainer = jax_impl.training.Trainer(Regressor(hidden), optimizer, program_cache=program_cache)
    history = trainer.fit(batches(), batches(), num_epochs=2)
    return trainer, history


def test_trainer_steps_from_the_cache_train_bit_for_bit_as_the_jitted_ones(tmp_path, monkeypatch):
    _, plain = fit(None)
    trainer, cached = fit(ProgramCache(tmp_path))
    assert cached.as_dict() == plain.as_dict()
    # Two batch shapes (16 and 8 rows): a gradients and an eval program each, and the update.
    assert trainer.compilations() == 5 and len(list(tmp_path.glob("*.jaxprogram"))) == 5

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced although the program cache holds the steps")

    monkeypatch.setattr(jax_impl.program_cache.export, "export", no_tracing)
    _, later = fit(ProgramCache(tmp_path))  # a later run: every step read back
    assert later.as_dict() == plain.as_dict()
    with pytest.warns(UserWarning, match="traced although"):  # the failed export: plain jax.jit instead
        fit(ProgramCache(tmp_path), hidden=9)  # another model: never the stored programs


def test_an_optax_object_update_is_not_cached_and_a_mesh_refuses_the_cache(tmp_path):
    trainer, _ = fit(ProgramCache(tmp_path), optimizer=optax.adamw(0.0123))
    assert sorted({path.name.split("-")[0] for path in tmp_path.glob("*.jaxprogram")}) == ["eval_step", "gradients"]
    assert trainer.compilations() == 5  # the update compiled all the same
    with pytest.raises(ValueError, match="program_cache serves one-device steps"):
        jax_impl.training.make_steps(Regressor(), OPTIMIZER, 0, object(), ProgramCache(tmp_path))


class WithLambda(Regressor):
    def __init__(self):
        super().__init__()
        self.activation = lambda x: jnp.tanh(x)  # static: described as "<lambda>", whichever it is


def test_a_model_holding_a_lambda_is_not_cached(tmp_path):
    with pytest.warns(UserWarning, match="not kept in the program cache: it holds the function .*<lambda>"):
        trainer = jax_impl.training.Trainer(WithLambda(), OPTIMIZER, program_cache=ProgramCache(tmp_path))
    trainer.fit(batches(), batches(), num_epochs=1)
    assert not any(tmp_path.iterdir()) and trainer.compilations() == 5


def test_a_model_is_described_by_what_it_holds_not_by_how_it_prints():
    from jax_impl.program_cache import Unidentifiable, identity

    # Two functions that print alike (jax.nn.relu and relu6 are both custom_jvp objects), classes
    # of one name in two modules, arrays that print alike: all told apart.
    assert identity(jax.nn.relu) != identity(jax.nn.relu6)
    assert identity(jnp.tanh) != identity(np.tanh) and identity(jax.lax.dot_general) == identity(jax.lax.dot_general)
    assert identity(np.zeros(2000)) != identity(np.r_[np.zeros(1999), 1.0])  # repr would print both with "..."
    assert identity(OPTIMIZER) != identity(OptimizerConfig("adamw", learning_rate=0.0124, weight_decay=0.01))
    first, second = type("Net", (), {"__module__": "expt_a"}), type("Net", (), {"__module__": "expt_b"})
    assert identity(first) != identity(second)

    def make_activation(scale):
        return lambda x: scale * x

    for value in (make_activation(1.0), object()):  # a closure; an object printed by address
        with pytest.raises(Unidentifiable):
            identity(value)


def test_the_process_start_is_known_to_the_clock_tick():
    # What "changed after this process started" compares with: a file written just before the start
    # (an install, then the run) must not count as changed.
    code = "import time; t = time.time_ns(); from jax_impl.program_cache import _process_start_ns as s; print(t - s())"
    lag_ns = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 <= lag_ns < 10**9  # the start: before the program's first line, and not long before
