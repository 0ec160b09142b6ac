"""compare resolves the device once, in the parent: both workers run on the same kind, a machine
where only one framework sees the GPU is refused with the install that fixes it, and the report
names both sides' devices."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from ml_patterns.errors import UsageError
from ml_patterns_app.compare import launch, runner
from ml_patterns_app.compare.report import build_report
from ml_patterns_app.compare.settings import CompareSettings
from ml_patterns_app.compare.summary import format_summary
from tests.test_compare import fake_result

H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize(
    ("choice", "gpus", "kind"),
    [
        ("auto", {"torch": H100, "jax": H100}, "gpu"),
        ("auto", {"torch": None, "jax": None}, "cpu"),
        ("gpu", {"torch": H100, "jax": H100}, "gpu"),
    ],
)
def test_one_kind_for_both_backends(choice, gpus, kind):
    assert runner.device_kind(choice, gpus) == kind


def test_torch_on_a_gpu_and_jax_on_the_cpu_is_refused_with_the_jax_install():
    with pytest.raises(UsageError) as error:
        runner.device_kind("auto", {"torch": H100, "jax": None})
    message = str(error.value)
    assert f"torch sees {H100}" in message and "jax sees no GPU" in message
    assert 'pip install "jax[cuda12]==' in message and "--device cpu" in message
    assert "download.pytorch.org" not in message  # torch needs nothing


def test_gpu_asked_where_torch_sees_none_names_the_torch_install():
    with pytest.raises(UsageError, match=r"torch: pip install torch --index-url https://download.pytorch.org/whl/cu"):
        runner.device_kind("gpu", {"torch": None, "jax": H100})


def test_the_forced_mismatch_stops_compare_before_any_worker(monkeypatch, default_dataset, tmp_path):
    monkeypatch.setattr(runner, "probe_gpu", lambda backend: H100 if backend == "torch" else None)
    started = []
    monkeypatch.setattr(runner, "run_worker", lambda *args, **kwargs: started.append(args))
    with pytest.raises(UsageError, match="jax sees no GPU"):
        runner.run_compare(CompareSettings(), default_dataset[0], tmp_path / "out", device="auto")
    assert started == []


def test_the_probe_asks_each_framework_in_a_process_of_its_own():
    assert launch.probe_gpu("jax") is None or isinstance(launch.probe_gpu("jax"), str)
    probe = subprocess.run(
        [sys.executable, "-m", "ml_patterns_app.compare.worker", "--probe", "torch"], capture_output=True, text=True
    )
    assert probe.returncode == 0 and '"gpu"' in probe.stdout


def test_a_cpu_choice_keeps_jax_off_any_gpu():
    from jax_impl.environment import process_environment

    assert process_environment(1, "cpu")["JAX_PLATFORMS"] == "cpu"
    assert "JAX_PLATFORMS" not in process_environment(1, "gpu")


def test_the_report_names_both_devices_and_refuses_mixed_kinds(default_dataset):
    def run():
        return fake_result([2.0, 1.0], [3.0, 2.0])

    results, ensemble, anchor = {"torch": run(), "jax": run()}, [run() for _ in range(3)], run()
    report = build_report(CompareSettings(), default_dataset[1], results, ensemble, anchor, default_dataset[0])
    assert "Devices: PyTorch (eager) on CPU; JAX (jax.jit) on CPU" in format_summary(report)
    results["jax"] = dataclasses.replace(results["jax"], device={"kind": "gpu", "name": H100})
    with pytest.raises(ValueError, match="different kinds of device"):
        build_report(CompareSettings(), default_dataset[1], results, ensemble, anchor, default_dataset[0])
