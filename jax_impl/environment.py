"""What a process needs set before JAX starts, kept apart from ``runtime`` so that a parent process
can ask without importing JAX (the contract: ``torch_impl.runtime``)."""


def process_environment(devices: int) -> dict[str, str]:
    """Environment variables for a process that will run on ``devices`` devices: the CPU devices JAX
    simulates, read when its backend starts (a GPU's devices are unaffected)."""
    return {"JAX_NUM_CPU_DEVICES": str(devices)} if devices > 1 else {}
