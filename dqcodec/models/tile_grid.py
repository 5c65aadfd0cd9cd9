"""Where tiles go: the tile grid of the tiled transforms, in pure Python (no torch), so
decoders that do not import torch tile exactly as `dqcodec.models.tiling` does."""

from __future__ import annotations

__all__ = ["latent_tiles", "tile_spans"]

Span = tuple[int, int, int, int]  # start, stop, core_start, core_stop


def tile_spans(length: int, tile: int, overlap: int) -> list[Span]:
    """Split [0, length) into near-equal cores of at most `tile`, each widened by `overlap`
    on both sides (clipped to [0, length)).

    Returns (start, stop, core_start, core_stop) per tile; the cores partition [0, length).
    Depends only on its arguments.
    """
    if tile < 1 or overlap < 0:
        raise ValueError(f"need tile >= 1 and overlap >= 0 (got tile={tile}, overlap={overlap})")
    if length <= 0:
        return []
    n = -(-length // tile)
    base, extra = divmod(length, n)  # the first `extra` cores get one more element
    spans = []
    core_start = 0
    for i in range(n):
        core_stop = core_start + base + (1 if i < extra else 0)
        spans.append(
            (max(0, core_start - overlap), min(length, core_stop + overlap), core_start, core_stop)
        )
        core_start = core_stop
    return spans


def latent_tiles(height: int, width: int, tile: int, overlap: int) -> list[tuple[Span, Span]]:
    """The (rows, columns) spans of the tiles of a height x width latent, row by row, as the
    tiled synthesis runs them: a latent that fits in one tile is one whole tile."""
    rows, cols = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    if len(rows) <= 1 and len(cols) <= 1:
        rows, cols = [(0, height, 0, height)], [(0, width, 0, width)]
    return [(row, col) for row in rows for col in cols]
