"""The schedule of a level's passes and the row blocks each pass is coded in, shared by the
float prior (training) and the integer prior (coding). Light on purpose: NumPy only.

The groups of a level are split into slices. Each slice is coded in two checkerboard halves
(anchors first), so a level takes 2 x slices passes whatever the image size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

# Logits are built a block of rows at a time so large images need bounded memory; the
# blocks depend only on the latent's shape, so encoder and decoder cut them alike.
LOGIT_BUDGET = 1 << 22  # elements of the (rows, K, d) intermediate per block


class Pass(NamedTuple):
    slice_index: int
    anchors: bool  # True: the anchor half of the checkerboard, False: the other half


def pass_schedule(slices: int) -> Iterator[Pass]:
    for s in range(slices):
        yield Pass(s, True)
        yield Pass(s, False)


def anchor_mask(height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of anchor positions: (i + j) even."""
    return (np.arange(height)[:, None] + np.arange(width)[None, :]) % 2 == 0


def row_blocks(per_row: int, height: int) -> list[slice]:
    """Blocks of rows holding at most LOGIT_BUDGET elements of `per_row` each (at least a row)."""
    rows = max(1, LOGIT_BUDGET // per_row)
    return [slice(r, min(r + rows, height)) for r in range(0, height, rows)]
