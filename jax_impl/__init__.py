"""The JAX side of ml-patterns (Flax NNX, optax). Mirrors ``torch_impl`` module for module, name for name."""
