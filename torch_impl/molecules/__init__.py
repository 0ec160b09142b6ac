"""The molecule models, torch side: one application of the generic patterns of ``torch_impl``."""
