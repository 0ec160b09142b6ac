"""Both frameworks set up alike for a benchmark run: threads, matmul precision, devices, cold compiles.

Imported by the runner only after ``bench.common.restrict_cpus`` has pinned the CPUs, since XLA sizes
its CPU thread pool when its backend starts.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator

# JAX reserves 75% of GPU memory when its backend starts, which would starve torch running in the
# same process; allocate on demand instead (read when the backend starts, so set before any use).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import torch  # noqa: E402
import torch._inductor.utils  # noqa: E402

from bench.common import PRECISION_POLICIES, Timing, measure_steps, warmup_excess_s  # noqa: E402

DEVICES = ("cpu", "gpu")


def torch_device(device: str) -> torch.device | None:
    """torch's device for ``"cpu"`` / ``"gpu"``, or ``None`` where torch cannot use one."""
    if device == "cpu":
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else None


def jax_device(device: str) -> jax.Device | None:
    """JAX's first device of that kind, or ``None`` where this jaxlib has no such backend."""
    try:
        return jax.devices(device)[0]
    except RuntimeError:  # "Unknown backend: 'gpu' requested, but no platforms ... are present"
        return None


def torch_sync(device: torch.device) -> Callable[[], None] | None:
    """What blocks until torch's queued work on ``device`` is done (CPU ops run synchronously)."""
    return torch.cuda.synchronize if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    """Starts ``torch_peak_memory``'s count afresh (CUDA only: torch keeps no CPU statistics)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def torch_peak_memory(device: torch.device) -> dict:
    """``{"bytes", "how"}``: the most torch allocated on ``device`` since ``reset_peak_memory``."""
    if device.type == "cuda":
        return {"bytes": torch.cuda.max_memory_allocated(device), "how": "torch.cuda.max_memory_allocated"}
    return {"bytes": None, "how": "n/a: torch keeps no CPU allocator statistics"}


def jax_step_memory(compiled: jax.stages.Compiled) -> dict:
    """``{"bytes", "how"}``: what a compiled step with donated arguments holds while it runs."""
    analysis = compiled.memory_analysis()
    return {
        "bytes": analysis.argument_size_in_bytes + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes,
        "how": "XLA memory analysis of the compiled step: arguments + outputs - donated + temporaries",
    }


def release_memory() -> None:
    """Frees what the last contender left on the GPU, so the next one starts from the same point."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_devices(choice: str) -> tuple[str, ...]:
    """``--device cpu|gpu|all`` -> the devices to run on; ``all`` means every device present."""
    gpu = torch_device("gpu") is not None or jax_device("gpu") is not None
    if choice == "gpu" and not gpu:
        raise ValueError(
            "--device gpu: no CUDA GPU found (torch.cuda.is_available() is False and jax has no gpu backend; "
            "install the CUDA builds of torch and jax on a GPU machine)"
        )
    if choice == "all":
        return ("cpu", "gpu") if gpu else ("cpu",)
    if choice not in DEVICES:
        raise ValueError(f"--device must be one of cpu, gpu, all; got {choice!r}")
    return (choice,)


@contextlib.contextmanager
def configured(threads: int, precision: str) -> Iterator[dict]:
    """Sets both frameworks' threads and matmul precision for the block, restoring them afterwards.

    JAX's persistent compilation cache is off inside, so compile times are cold on both sides
    (see ``cold_torch_compile`` for torch's). Yields ``describe()``, read back after setting.
    """
    if precision not in PRECISION_POLICIES:
        raise ValueError(f"--precision must be one of {sorted(PRECISION_POLICIES)}, got {precision!r}")
    policy = PRECISION_POLICIES[precision]
    saved_torch = (torch.get_num_threads(), torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    saved_jax = {name: getattr(jax.config, name) for name in ("jax_default_matmul_precision", "jax_enable_compilation_cache")}
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(policy["torch"])  # sets torch.backends.cuda.matmul.allow_tf32 with it
    torch.backends.cudnn.allow_tf32 = policy["tf32"]
    jax.config.update("jax_default_matmul_precision", policy["jax"])
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield describe(precision)
    finally:
        torch.set_num_threads(saved_torch[0])
        torch.set_float32_matmul_precision(saved_torch[1])
        torch.backends.cudnn.allow_tf32 = saved_torch[2]
        for name, value in saved_jax.items():
            jax.config.update(name, value)


def describe(precision: str) -> dict:
    """What the loaded frameworks report: versions, threads, devices and the precision in force."""
    gpu = torch_device("gpu")
    jax_devices = {}
    for kind in DEVICES:
        device = jax_device(kind)
        if device is not None:
            jax_devices[kind] = device.device_kind
    return {
        "torch": {
            "version": torch.__version__,
            "intra_op_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(gpu) if gpu is not None else None,
        },
        "jax": {
            "version": jax.__version__,
            "default_backend": jax.default_backend(),
            "devices": jax_devices,
            "compilation_cache": jax.config.jax_enable_compilation_cache,
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        },
        "precision": {
            "policy": precision,
            "summary": PRECISION_POLICIES[precision]["summary"],
            "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
            "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        },
    }


@contextlib.contextmanager
def cold_torch_compile() -> Iterator[None]:
    """``torch.compile`` calls in the block compile from scratch, as JAX's ``jit`` does here.

    Dynamo's in-memory caches are reset, and inductor gets an empty on-disk cache (FX graphs,
    generated C++/Triton kernels), deleted afterwards; otherwise a second run of the benchmark
    would time cache hits.
    """
    torch._dynamo.reset()
    # torch >= 2.8 calls it fresh_cache; earlier releases fresh_inductor_cache.
    fresh = getattr(torch._inductor.utils, "fresh_cache", None) or torch._inductor.utils.fresh_inductor_cache
    with fresh():
        yield


def measure_torch_step(step: Callable[[], torch.Tensor], device: torch.device, quick: bool,
                       compile_backend: str | None) -> tuple[list[float], Timing, float | None]:
    """``(warm-up losses, timing, compile_s)`` of a torch step, eager (``compile_backend=None``) or
    ``torch.compile``d from a cold cache, its compile time being the warm-up's excess over steady steps."""
    sync = torch_sync(device) or (lambda: None)
    if compile_backend is None:
        losses, _, timing = measure_steps(step, sync, quick)
        return losses, timing, None
    with cold_torch_compile():
        losses, warmup_s, timing = measure_steps(torch.compile(step, backend=compile_backend), sync, quick)
    return losses, timing, warmup_excess_s(warmup_s, timing)
