"""Regex SMILES tokenizer with a JSON vocabulary.

The pattern is the one of Schwaller et al., "Molecular Transformer" (ACS Cent. Sci. 2019), used by
most SMILES language models: bracket atoms stay whole (``[nH]``, ``[C@@H]``, ``[N+]``), ``Br`` and
``Cl`` are single tokens, and two-digit ring closures are written ``%nn``.

Token ids are plain Python ints. Special tokens come first and have fixed ids, so a padded batch can
be built without looking at the vocabulary: PAD=0, UNK=1, BOS=2, EOS=3, MASK=4.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ml_patterns.io import atomic_write_text

SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"
)

PAD, UNK, BOS, EOS, MASK = "<pad>", "<unk>", "<bos>", "<eos>", "<mask>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, MASK)
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = range(len(SPECIAL_TOKENS))


class TokenizationError(ValueError):
    """A SMILES string holds characters that no token of the grammar covers."""


def tokenize(smiles: str) -> list[str]:
    """Split a SMILES string into tokens; ``"".join(tokenize(s)) == s`` always holds.

    Raises:
        TokenizationError: if some characters match no token (they would otherwise vanish
            silently), naming the first one and its position.
    """
    tokens = SMILES_REGEX.findall(smiles)
    if sum(map(len, tokens)) != len(smiles):
        position = _first_uncovered_position(smiles)
        raise TokenizationError(
            f"SMILES {smiles!r}: character {smiles[position]!r} at position {position} is not part of any SMILES token"
        )
    return tokens


def _first_uncovered_position(smiles: str) -> int:
    position = 0
    for match in SMILES_REGEX.finditer(smiles):
        if match.start() != position:
            return position
        position = match.end()
    return position


class SmilesTokenizer:
    """Maps SMILES strings to token ids and back.

    ``unknown_counts`` counts, per token, every occurrence that ``encode`` mapped to UNK, so that a
    vocabulary mismatch shows up in numbers instead of silently degrading the data.
    """

    def __init__(self, tokens: Sequence[str]):
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"vocabulary must start with the special tokens {SPECIAL_TOKENS}, "
                f"got {tuple(tokens[: len(SPECIAL_TOKENS)])}"
            )
        duplicates = [t for t, n in collections.Counter(tokens).items() if n > 1]
        if duplicates:
            raise ValueError(f"vocabulary has duplicate tokens: {duplicates}")
        self.tokens: tuple[str, ...] = tuple(tokens)
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self.unknown_counts: collections.Counter[str] = collections.Counter()

    @classmethod
    def build(cls, smiles: Iterable[str], min_frequency: int = 1) -> SmilesTokenizer:
        """Builds the vocabulary from a corpus: special tokens, then tokens by falling frequency.

        Ties are broken alphabetically so the vocabulary is a deterministic function of the corpus.
        """
        counts = collections.Counter(t for s in smiles for t in tokenize(s))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(SPECIAL_TOKENS + tuple(t for t, n in ranked if n >= min_frequency))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, smiles: str, add_special_tokens: bool = True) -> list[int]:
        """SMILES -> ids, wrapped in BOS ... EOS by default. Unknown tokens become UNK and are counted."""
        ids = []
        for token in tokenize(smiles):
            token_id = self.token_to_id.get(token)
            if token_id is None:
                self.unknown_counts[token] += 1
                token_id = UNK_ID
            ids.append(token_id)
        if add_special_tokens:
            ids = [BOS_ID, *ids, EOS_ID]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> SMILES. PAD, BOS, EOS and MASK are dropped; UNK is kept as ``<unk>`` so a lossy
        encoding is visible in the output rather than silently shortened."""
        skipped = {PAD_ID, BOS_ID, EOS_ID, MASK_ID}
        out = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < len(self.tokens):
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {len(self.tokens)})")
            if token_id not in skipped:
                out.append(self.tokens[token_id])
        return "".join(out)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary as JSON: ``{"tokens": [...], "special_tokens": {...}}``."""
        payload = {
            "tokens": list(self.tokens),
            "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
        }
        atomic_write_text(Path(path), json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> SmilesTokenizer:
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            tokens = payload["tokens"]
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file {path} does not exist") from None
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"vocabulary file {path} is not a valid vocabulary: {error}") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"vocabulary file {path}: 'tokens' must be a list of strings")
        return cls(tokens)
