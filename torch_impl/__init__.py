"""The PyTorch side of ml-patterns. Mirrors ``jax_impl`` module for module, name for name."""
