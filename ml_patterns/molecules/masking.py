"""BERT-style token corruption for the masked-token head, in numpy so both backends see one mask.

The masks come from a ``numpy.random.Generator`` on the host, not from a backend's RNG: torch and
JAX then train on identical corrupted inputs, and a run is reproducible from the generator's seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ml_patterns.molecules.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, SPECIAL_TOKENS

# Ids below this are special tokens; a "random token" replacement is drawn from [FIRST_REGULAR_ID, vocab).
FIRST_REGULAR_ID = len(SPECIAL_TOKENS)
# Tokens never selected for prediction: they carry no chemistry, and predicting BOS at position 0
# would teach nothing.
NEVER_MASKED = (PAD_ID, BOS_ID, EOS_ID, MASK_ID)


@dataclasses.dataclass(frozen=True)
class MaskedTokens:
    """The output of ``mask_tokens``; every field is ``[batch, length]``.

    input_ids: int32, the corrupted ids the model reads.
    targets: int32, the original ids where ``mask`` is True and PAD elsewhere (sanitized, so an
        unmasked position never indexes the vocabulary with garbage).
    mask: bool, the positions whose prediction is scored.
    """

    input_ids: np.ndarray
    targets: np.ndarray
    mask: np.ndarray


def mask_tokens(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    vocab_size: int,
    mask_prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
) -> MaskedTokens:
    """Selects each real, non-special token with probability ``mask_prob`` for prediction (BERT).

    Of the selected positions a fraction ``mask_token_prob`` is replaced by MASK, ``random_token_prob``
    by a token drawn uniformly from the regular vocabulary, and the rest keeps its token (so the model
    cannot learn that only MASK positions matter). PAD, BOS, EOS and MASK are never selected. A
    sequence may end up with no selected position (a short molecule); the masked loss then simply
    counts no term for it.

    Args:
        input_ids: integer ``[batch, length]``.
        attention_mask: bool ``[batch, length]``, True on real tokens.
        rng: the generator; its draws are the only randomness, in a fixed order.
        vocab_size: the vocabulary size (random replacements are drawn below it).

    Returns:
        ``MaskedTokens`` (int32 ids and targets, bool mask).
    """
    input_ids = np.asarray(input_ids)
    attention_mask = np.asarray(attention_mask)
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be [batch, length], "
            f"got {input_ids.shape} and {attention_mask.shape}"
        )
    if attention_mask.dtype != np.bool_:
        raise ValueError(f"attention_mask must be bool, got {attention_mask.dtype}")
    if not 0 < mask_prob < 1 or mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1:
        raise ValueError(
            f"need 0 < mask_prob < 1 and mask_token_prob + random_token_prob <= 1, got mask_prob={mask_prob}, "
            f"mask_token_prob={mask_token_prob}, random_token_prob={random_token_prob}"
        )
    if vocab_size <= FIRST_REGULAR_ID:
        raise ValueError(
            f"vocab_size {vocab_size} leaves no regular token to draw (special ids are < {FIRST_REGULAR_ID})"
        )

    maskable = attention_mask & ~np.isin(input_ids, NEVER_MASKED)
    # Three draws of the full shape, always in this order, whatever the outcome: the generator's
    # state afterwards does not depend on the data.
    selected = (rng.random(input_ids.shape) < mask_prob) & maskable
    action = rng.random(input_ids.shape)
    random_ids = rng.integers(FIRST_REGULAR_ID, vocab_size, size=input_ids.shape)

    corrupted = input_ids.astype(np.int32, copy=True)
    to_mask = selected & (action < mask_token_prob)
    to_random = selected & (action >= mask_token_prob) & (action < mask_token_prob + random_token_prob)
    corrupted[to_mask] = MASK_ID
    corrupted[to_random] = random_ids[to_random]
    targets = np.where(selected, input_ids, PAD_ID).astype(np.int32)
    return MaskedTokens(input_ids=corrupted, targets=targets, mask=selected)
