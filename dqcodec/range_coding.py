"""Range coding of code indices with constriction, one call per pass.

Probabilities arrive as an integer frequency table (the integer prior: frequencies summing
to 2^24 - K) or, for files of format version 1, as float logits. constriction's
Categorical(perfect=False) model family gives each symbol floor(cumulative * scale) + index
as its cumulative, with scale = (2^24 - K) / sum; for an integer table that scale is exactly
1 and every sum is an exact integer in float64, so the coder uses the table itself: the
same quantiles on every machine, nothing rounded.
"""

from __future__ import annotations

import constriction
import numpy as np

_MODEL = constriction.stream.model.Categorical(perfect=False)
# constriction's range coder quantizes probabilities to 24 bits and gives every symbol at
# least one quantum, so no symbol costs more than 24 bits
_MIN_PROBABILITY = 2.0**-24


def probability_table(logits, table=None) -> np.ndarray:
    """(..., K) integer table (an array or tensor), else float logits (a tensor: the float
    prior, format version 1) -> (n, K) float64 rows for constriction, in their order: the
    table's integers exactly, else softmax(logits)."""
    if table is not None:
        probs = np.asarray(table, dtype=np.float64)
    else:
        import torch  # only files of format version 1 code with the float prior

        probs = torch.softmax(logits.float(), dim=-1).double().numpy()
    return probs.reshape(-1, probs.shape[-1])


class IndexEncoder:
    def __init__(self):
        self._coder = constriction.stream.queue.RangeEncoder()
        self.information_bits = 0.0  # cross-entropy of the coded indices under the prior

    def encode(self, indices, logits, table=None) -> None:
        probs = probability_table(logits, table)
        symbols = np.asarray(indices).reshape(-1).astype(np.int32)
        if symbols.size == 0:
            return
        self._coder.encode(symbols, _MODEL, probs)
        if table is not None:  # what the coder spends: the table plus constriction's one
            chosen = (probs[np.arange(symbols.size), symbols] + 1) / 2.0**24
        else:
            chosen = probs[np.arange(symbols.size), symbols] / probs.sum(1)
        self.information_bits += float(-np.log2(np.maximum(chosen, _MIN_PROBABILITY)).sum())

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


class IndexDecoder:
    """Decodes what IndexEncoder wrote. Corrupt data raises ValueError (never another type);
    constriction reads past the end as if the data went on with zero words, so a short
    payload does not fail here by itself."""

    def __init__(self, data: bytes):
        if len(data) % 4:
            raise ValueError("payload length is not a multiple of 4 bytes")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, logits, table=None) -> np.ndarray:
        """int64 indices shaped as the table (or logits) less its last axis."""
        probs = probability_table(logits, table)
        shape = (table if table is not None else logits).shape[:-1]
        if probs.shape[0] == 0:
            return np.zeros(shape, dtype=np.int64)
        try:
            symbols = self._coder.decode(_MODEL, probs)
        except AssertionError:  # constriction's way of saying the data cannot come from this model
            raise ValueError(
                "range-coded data is invalid under the model's probabilities"
            ) from None
        return symbols.astype(np.int64).reshape(shape)
