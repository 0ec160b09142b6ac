"""What a process needs set before torch starts, kept apart from ``runtime`` so that a parent process
can ask without importing torch (the contract: ``torch_impl.runtime``)."""


def process_environment(devices: int) -> dict[str, str]:
    """Environment variables for a process that will run on ``devices`` devices: none (DDP starts a
    process per device itself)."""
    return {}
