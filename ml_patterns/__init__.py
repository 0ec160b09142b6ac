"""ml-patterns: training patterns written twice, in PyTorch (``torch_impl``) and JAX (``jax_impl``).

This package is the framework-free core (numpy only): configuration, the SMILES tokenizer, dataset
preparation, the lazy dataset and batch sampler, and the ``ml-patterns`` command line.
"""

__version__ = "0.1.0"
