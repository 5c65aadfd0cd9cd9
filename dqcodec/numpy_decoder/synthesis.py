"""The decoder's float transforms (DQModel's top_s, g_s and skip_s) in NumPy, without torch.

Activations are channels-last (H, W, C) float32 arrays of one image. Each stride-2
transposed convolution runs as a subpixel convolution: output row 2m + r takes input rows
m-1..m+1, so a layer is a 3x3 convolution onto four output phases and a pixel shuffle (see
`dqcodec.layers.convolutions.SubpixelDeconv`), in NumPy an im2col of the 3x3
neighbourhoods and a GEMM per phase, or for the image's last layer (3 output channels) one
GEMM at input resolution and a sum of shifted tap planes (`_Deconv`). Decoded pixels may
differ from the torch transforms by float rounding only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dqcodec.layers.fixed_point import erf64
from dqcodec.models.config import ModelConfig
from dqcodec.models.tile_grid import Span, latent_tiles
from dqcodec.runtime import parallel_map, tile_workers, workers

__all__ = ["Synthesis", "erf"]

# floats of im2col columns or tap planes per block of rows (8 MB): the temporaries stay
# small and in cache, and the GEMMs large enough for BLAS (1 << 19 to 1 << 21 all ran
# within 3%, 1 << 23 15% slower, one thread)
_BLOCK_ELEMENTS = 1 << 21

# the 3 x 3 input neighbours (dy, dx) that feed output pixel (2m + ry, 2n + rx), in the
# order of im2col's columns: phase (ry, rx) of a 5 x 5 kernel reads those with dy >= ry - 1
# and dx >= rx - 1, a contiguous run of columns for each of the four phases
_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 0), (0, 1), (1, 0), (1, 1), (0, -1), (1, -1), (-1, -1))

Pointwise = Callable[[np.ndarray], None]


def erf(x: np.ndarray) -> np.ndarray:
    """fixed_point.erf64 with NumPy's exp (the synthesis is float arithmetic anyway), in x's
    dtype."""
    return erf64(x, np.exp).astype(x.dtype, copy=False)


def _gelu_inplace(x: np.ndarray) -> None:
    """Exact (erf) GELU, as torch.nn.GELU(), over x in place."""
    x *= 0.5 * (1 + erf(x * np.float32(1 / math.sqrt(2))))


def _subpixel_taps(weight: np.ndarray, padding: int) -> np.ndarray:
    """The (9, Cin, 2, 2, Cout) taps of ConvTranspose2d(stride 2, `padding`, output_padding
    1) with `weight` (Cin, Cout, k, k): [j, :, ry, rx] maps input neighbour _NEIGHBOURS[j]
    to output phase (ry, rx), zero where the kernel has no such tap.

    out[o] = sum_i x[i] w[o + padding - 2 i], so output 2m + r reads input m + d through
    tap r + padding - 2 d, where that tap exists."""
    cin, cout, k, _ = weight.shape
    taps = np.zeros((9, cin, 2, 2, cout), np.float32)
    for j, (dy, dx) in enumerate(_NEIGHBOURS):
        for ry in range(2):
            for rx in range(2):
                ty, tx = ry + padding - 2 * dy, rx + padding - 2 * dx
                if 0 <= ty < k and 0 <= tx < k:
                    taps[j, :, ry, rx] = weight[:, :, ty, tx]
    return taps


@dataclass(frozen=True)
class _Deconv:
    """A stride-2 transposed convolution with the pointwise layer that follows it.

    Wide layers run as im2col of the 3 x 3 neighbourhoods and one GEMM per output phase over
    the columns of its taps (25 of the 36 neighbour-phase pairs of a 5 x 5 kernel). A layer
    with few output channels (the image's last) runs instead as one GEMM at input resolution
    onto the tap planes, the contributions of every neighbour to every phase (36 Cout
    values per input pixel, fewer than im2col's 9 Cin), summed shifted."""

    taps: np.ndarray  # (9, Cin, 2, 2, Cout), as _subpixel_taps
    bias: np.ndarray  # (4 Cout,): the bias of every output phase
    after: Pointwise | None = None

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, np.ndarray], name: str, after: Pointwise | None = None
    ) -> _Deconv:
        weight = _float32(weights[f"{name}.weight"])
        taps = _subpixel_taps(weight, padding=weight.shape[-1] // 2)
        return cls(taps, np.tile(_float32(weights[f"{name}.bias"]), 4), after)

    @property
    def narrow(self) -> bool:
        """Whether the tap planes are smaller than im2col's columns."""
        return 36 * self.taps.shape[-1] < 9 * self.taps.shape[1]

    @cached_property
    def phase_matrices(self) -> list[tuple[int, int, slice, np.ndarray]]:
        """(ry, rx, im2col columns, (columns, Cout) matrix) of each output phase: the
        columns of the neighbours from its first tap to its last."""
        cin, cout = self.taps.shape[1], self.taps.shape[-1]
        matrices = []
        for ry in range(2):
            for rx in range(2):
                used = np.flatnonzero(self.taps[:, :, ry, rx].any(axis=(1, 2)))
                a, b = (used[0], used[-1] + 1) if used.size else (0, 0)
                matrix = np.ascontiguousarray(self.taps[a:b, :, ry, rx]).reshape(-1, cout)
                matrices.append((ry, rx, slice(a * cin, b * cin), matrix))
        return matrices

    @cached_property
    def plane_matrix(self) -> np.ndarray:
        """(Cin, (neighbour, ry, rx, Cout)): input pixel -> its tap planes."""
        return np.ascontiguousarray(self.taps.transpose(1, 0, 2, 3, 4)).reshape(
            self.taps.shape[1], -1
        )

    def __call__(self, padded: np.ndarray, pad_output: bool) -> np.ndarray:
        """padded: (H + 2, W + 2, Cin) input with a zero border -> (2H, 2W, Cout), inside a
        zero border of one when pad_output (the next layer's input)."""
        height, width = padded.shape[0] - 2, padded.shape[1] - 2
        cout = self.taps.shape[-1]
        shape = (2 * height, 2 * width, cout)
        out = _empty_padded(*shape) if pad_output else np.empty(shape, np.float32)
        inner = out[1:-1, 1:-1] if pad_output else out
        columns = 36 * cout if self.narrow else 9 * self.taps.shape[1]
        rows = max(1, min(_BLOCK_ELEMENTS // max(1, width * columns), -(-height // workers())))

        def block(start: int) -> None:  # blocks write disjoint rows: one per thread
            stop = min(height, start + rows)
            phases = (
                self._planes(padded, start, stop)
                if self.narrow
                else self._im2col_gemms(padded, start, stop)
            )
            phases += self.bias
            if self.after is not None:
                self.after(phases.reshape(-1, cout))
            _pixel_shuffle_into(inner[2 * start : 2 * stop], phases, width)

        parallel_map(block, range(0, height, rows))
        return out

    def _im2col_gemms(self, padded: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The output phases of input rows [start, stop), without bias: (rows * W, 4 Cout)."""
        cols = _im2col(padded, start, stop)
        phases = np.empty((cols.shape[0], 2, 2, self.taps.shape[-1]), np.float32)
        for ry, rx, columns, matrix in self.phase_matrices:
            np.matmul(cols[:, columns], matrix, out=phases[:, ry, rx])
        return phases.reshape(cols.shape[0], -1)

    def _planes(self, padded: np.ndarray, start: int, stop: int) -> np.ndarray:
        """_im2col_gemms by the tap planes of padded rows [start, stop + 2)."""
        rows, width, cin = stop - start, padded.shape[1] - 2, padded.shape[2]
        planes = padded[start : stop + 2].reshape(-1, cin) @ self.plane_matrix
        planes = planes.reshape(rows + 2, width + 2, 9, -1)
        phases = np.zeros((rows, width, planes.shape[-1]), np.float32)
        for j, (dy, dx) in enumerate(_NEIGHBOURS):
            phases += planes[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + width, j]
        return phases.reshape(rows * width, -1)


def _float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _empty_padded(height: int, width: int, channels: int) -> np.ndarray:
    """An (height + 2, width + 2, channels) array: a zero border around uninitialised values."""
    out = np.empty((height + 2, width + 2, channels), np.float32)
    out[[0, -1]] = 0
    out[:, [0, -1]] = 0
    return out


def _padded(x: np.ndarray) -> np.ndarray:
    out = _empty_padded(*x.shape)
    out[1:-1, 1:-1] = x
    return out


def _im2col(padded: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The 3x3 neighbourhoods (_NEIGHBOURS) of input rows [start, stop): (rows * W, 9 Cin)."""
    width, channels = padded.shape[1] - 2, padded.shape[2]
    cols = np.empty((stop - start, width, 9, channels), np.float32)
    for j, (dy, dx) in enumerate(_NEIGHBOURS):
        cols[:, :, j] = padded[start + 1 + dy : stop + 1 + dy, 1 + dx : 1 + dx + width]
    return cols.reshape(-1, 9 * channels)


def _pixel_shuffle_into(out: np.ndarray, phases: np.ndarray, width: int) -> None:
    """phases (rows * W, (ry, rx, C)) -> out (2 rows, 2 W, C), a view of the output."""
    rows, channels = out.shape[0] // 2, out.shape[2]
    out.reshape(rows, 2, width, 2, channels)[...] = phases.reshape(
        rows, width, 2, 2, channels
    ).transpose(0, 2, 1, 3, 4)


def _inverse_gdn(weights: Mapping[str, np.ndarray], name: str) -> Pointwise:
    """dqcodec.layers.GDN(inverse=True) as y = x * sqrt(beta + gamma x^2), per row of x."""
    beta = _non_negative(weights, f"{name}.beta")
    gamma_t = np.ascontiguousarray(_non_negative(weights, f"{name}.gamma").T)

    def inverse_gdn_(x: np.ndarray) -> None:
        norm = np.square(x) @ gamma_t
        norm += beta
        x *= np.sqrt(norm, out=norm)

    return inverse_gdn_


def _non_negative(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """NonNegative's value, max(param, bound)^2 - pedestal, in float32 as torch has it."""
    bound = _float32(weights[f"{name}_reparam.lower_bound.bound"])
    pedestal = _float32(weights[f"{name}_reparam.pedestal"])
    return np.square(np.maximum(_float32(weights[name]), bound)) - pedestal


class Synthesis:
    """DQModel's decoder transforms from its state dict (name -> float32 array)."""

    def __init__(self, weights: Mapping[str, np.ndarray], config: ModelConfig):
        self.config = config
        self.top_layers = [
            _Deconv.from_weights(weights, "top_s.0", after=_gelu_inplace),
            _Deconv.from_weights(weights, "top_s.2"),
        ]
        self.layers = [
            _Deconv.from_weights(weights, f"g_s.{i}", after=_inverse_gdn(weights, f"g_s.{i + 1}"))
            for i in (0, 2, 4)
        ]
        self.layers.append(_Deconv.from_weights(weights, "g_s.6"))
        self.skip = _Skip.from_weights(weights, config) if config.linear_skip else None

    def condition(self, top: np.ndarray) -> np.ndarray:
        """top_s: the top level's decoded latent (h, w, top channels), divided by its gain
        -> the conditioning features (4h, 4w, width)."""
        return _run(self.top_layers, top)

    def synthesise(self, y: np.ndarray) -> np.ndarray:
        """g_s (+ skip_s): latent (h, w, C) -> image (16h, 16w, 3), unclamped."""
        image = _run(self.layers, y)
        if self.skip is not None:
            image += self.skip(y)
        return image

    def tiled(
        self,
        y: np.ndarray,
        write: Callable[[np.ndarray, int, int], None],
        tile: int = 32,
        overlap: int = 2,
    ) -> None:
        """synthesise(y) on overlapping latent tiles, as tiling.tiled_synthesis with
        `write`: each tile's core (rows, cols, 3), a view into the tile's image, goes to
        write(core, top, left), its pixel origin; the cores partition the image. A latent
        that fits in one tile goes whole. Beside a busy process the tiles run side by side
        on runtime.tile_workers() threads, and `write` is called from them in turn."""
        if y.ndim != 3:
            raise ValueError(f"expected an (H, W, C) latent, got shape {y.shape}")
        stride = self.config.bottom_stride
        lock = threading.Lock()

        def synthesise_tile(tile: tuple[Span, Span]) -> None:
            (r0, r1, core_r0, core_r1), (c0, c1, core_c0, core_c1) = tile
            image = self.synthesise(y[r0:r1, c0:c1])
            core = image[
                (core_r0 - r0) * stride : (core_r1 - r0) * stride,
                (core_c0 - c0) * stride : (core_c1 - c0) * stride,
            ]
            with lock:
                write(core, core_r0 * stride, core_c0 * stride)

        tiles = latent_tiles(*y.shape[:2], tile, overlap)
        parallel_map(synthesise_tile, tiles, threads=tile_workers())


def _run(layers: list[_Deconv], x: np.ndarray) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f"expected an (H, W, C) array, got shape {x.shape}")
    x = _padded(_float32(x))
    for i, layer in enumerate(layers):
        x = layer(x, pad_output=i + 1 < len(layers))
    return x


@dataclass(frozen=True)
class _Skip:
    """skip_s, ConvTranspose2d(kernel s, stride s): one matmul per latent position."""

    matrix: np.ndarray  # (Cin, (s, s, 3))
    bias: np.ndarray  # (3,)
    stride: int

    @classmethod
    def from_weights(cls, weights: Mapping[str, np.ndarray], config: ModelConfig) -> _Skip:
        weight = _float32(weights["skip_s.weight"])  # (Cin, 3, s, s)
        matrix = np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(weight.shape[0], -1)
        return cls(matrix, _float32(weights["skip_s.bias"]), config.bottom_stride)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        height, width, channels = y.shape
        s = self.stride
        blocks = _float32(y).reshape(-1, channels) @ self.matrix
        image = blocks.reshape(height, width, s, s, 3).transpose(0, 2, 1, 3, 4)
        return image.reshape(height * s, width * s, 3) + self.bias
