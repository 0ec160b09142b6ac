"""The GPU check runs its CPU analogues (``--dry-run``), and what it checks on a GPU that
can be checked here: where a resumed Adam keeps its step, the CUDA RNG states in a checkpoint."""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import torch

import jax_impl.runtime
import jax_impl.training
import torch_impl.training
import torch_impl.training_state
from ml_patterns_bench import gpu_check, gpu_probes


def test_the_dry_run_runs_every_cpu_analogue(default_dataset, tmp_path, monkeypatch, capsys):
    """``--dry-run``, in this process (the script's ``main``), its probes on 32 molecules (two
    batches an epoch) instead of 64: what each check runs, not its size, is under test. The host-sync
    check here is the suite's test that a torch and a JAX epoch sync nothing inside the step
    (tests/test_sync_free.py shows the torch guard can fail)."""
    monkeypatch.setattr(gpu_probes, "MOLECULES", 32)
    out = tmp_path / "report"
    assert gpu_check.main(["--dry-run", "--data", str(default_dataset[0]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "gpu_check.json").read_text())
    statuses = {check["name"]: check["status"] for check in record["checks"]}
    assert len(statuses) == len(gpu_check.CHECKS)
    for name in ("both frameworks on the GPU", "compare's parity on the GPU", "bench --quick --device gpu"):
        assert statuses[name] == "skipped"
    for name in ("no host sync per step", "float32 policy honoured", "resume on the device"):
        assert statuses[name] == "pass", record
    assert statuses["SDPA kernel"] == "info"
    resume = next(c for c in record["checks"] if c["name"] == "resume on the device")["data"]
    assert resume["torch"]["bit_exact"] and resume["jax"]["bit_exact"]  # on the CPU a resume is bit-exact
    assert "[PASS   ] no host sync per step" in printed and (out / "gpu_check.md").is_file()


def test_a_check_that_raises_is_a_failure_and_the_rest_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(gpu_check, "CHECKS", (broken, gpu_check.compare_parity))
    ctx = gpu_check.Context("cpu", tmp_path, tmp_path, {})
    checks = gpu_check.run_checks(ctx, io.StringIO())
    assert [c.status for c in checks] == ["fail", "skipped"] and "no such kernel" in checks[0].detail


def test_adam_step_sits_where_the_implementation_reads_it():
    parameter = torch.nn.Parameter(torch.zeros(2, device="meta"))
    where = torch_impl.training_state.adam_step_device
    assert where({"fused": True}, parameter) == torch.device("meta")
    assert where({"fused": None, "capturable": True}, parameter) == torch.device("meta")
    assert where({"fused": None, "capturable": False, "foreach": True}, parameter) == torch.device("cpu")


def test_cuda_rng_states_are_saved_and_restored_where_there_are_gpus(monkeypatch):
    states = [torch.arange(8, dtype=torch.uint8), torch.arange(8, 16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    trainer = torch_impl.training.Trainer.__new__(torch_impl.training.Trainer)
    saved = json.loads(json.dumps(trainer._backend_state()))  # as the checkpoint's JSON keeps it
    assert len(saved["torch_cuda_rng_states"]) == 2
    trainer._load_backend_state(saved)
    assert [s.tolist() for s in restored] == [s.tolist() for s in states]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # another GPU count: left alone
    restored.clear()
    trainer._load_backend_state(saved)
    assert restored == []


def test_jax_predict_runs_one_jitted_program_per_batch_shape(default_dataset):
    root, manifest = default_dataset
    trainer, loader = gpu_probes.small_trainer("jax", root, manifest, None)
    batch = trainer.batch_transform(next(iter(loader)), 0, 0, train=False)
    dev = jax.devices("cpu")[0]
    before = jax_impl.runtime._apply._cache_size()
    first = jax_impl.runtime.predict(trainer.model, batch, dev)
    again = jax_impl.runtime.predict(trainer.model, batch, dev)
    assert jax_impl.runtime._apply._cache_size() == before + 1  # compiled once, reused
    eager = trainer.model(jax_impl.training.to_device(batch, dev))
    for name, value in first.items():
        np.testing.assert_allclose(value, np.asarray(eager[name]), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(value, again[name])


def test_jax_peak_memory_per_phase_is_exact_or_says_it_is_a_bound():
    class FakeGpu:
        platform = "gpu"
        peak = 100

        def memory_stats(self):
            return {"peak_bytes_in_use": self.peak}

    gpu = FakeGpu()
    jax_impl.runtime.reset_peak_memory(gpu)
    bound = jax_impl.runtime.peak_memory(gpu)  # XLA's peak came before the reset: only a bound
    assert bound["bytes"] == 100 and bound["how"].startswith("at most") and bound["measure"] == "allocator peak"
    gpu.peak = 150
    exact = jax_impl.runtime.peak_memory(gpu)  # it rose during the phase: the phase's own peak
    assert exact["bytes"] == 150 and not exact["how"].startswith("at most")
