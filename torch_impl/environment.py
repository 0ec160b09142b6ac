"""What a process needs set before torch starts, kept apart from ``runtime`` so that a parent process
can ask without importing torch (the contract: ``torch_impl.runtime``)."""


def process_environment(devices: int, kind: str = "auto") -> dict[str, str]:
    """Environment variables for a process that will run on ``devices`` devices of ``kind``: none
    (DDP starts a process per device itself; ``select_device`` picks the kind)."""
    return {}
