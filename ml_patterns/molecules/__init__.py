"""The molecule workload, framework-free: one user of the generic patterns, our demonstration.

SMILES tokenizer, dataset preparation (RDKit's NCI set by default, or a user's CSV), token masking,
the model configuration and the batch transform that turns collated records into a molecule model's
batch (standardized labels, masked tokens). The models themselves are in
``torch_impl.molecules`` and ``jax_impl.molecules``.
"""
