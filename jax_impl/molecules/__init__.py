"""The molecule models, JAX side: one application of the generic patterns of ``jax_impl``."""
