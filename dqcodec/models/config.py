"""Model hyper-parameters, stored with the weights so a file fully describes its model."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class LevelConfig:
    """One level of the hierarchy: C latent channels split into G groups, K codes per group."""

    channels: int
    groups: int
    codebook_size: int
    slices: int  # channel-group passes of the prior (each run as two checkerboard halves)

    def __post_init__(self):
        if self.channels % self.groups:
            raise ValueError("channels must be divisible by groups")
        if self.groups % self.slices:
            raise ValueError("groups must be divisible by slices")

    @property
    def group_dim(self) -> int:
        return self.channels // self.groups


@dataclass(frozen=True)
class ModelConfig:
    width: int = 128  # N: feature channels of the transforms
    bottom: LevelConfig = LevelConfig(channels=192, groups=96, codebook_size=64, slices=4)
    top: LevelConfig = LevelConfig(channels=64, groups=32, codebook_size=64, slices=2)
    prior_width: int = 128
    # the prior's view of each pass's decoded neighbourhood: kernel of the convolution over
    # the slices already decoded (1: per position), and residual 3x3 blocks before its head
    prior_kernel: int = 1
    prior_blocks: int = 0
    # a logit per code predicted beside the Gaussian bump: any shape of distribution
    prior_free_logits: bool = False
    lmbda: float = 0.0067  # rate-distortion trade-off used in training (MSE on 0..255 scale)
    linear_skip: bool = False  # block-linear paths beside the deep transforms (fast early training)
    rate_weight: float = 0.05  # entropy-constrained assignment: cost = |z-c|^2 + rate_weight * bits
    # Variable rate: one lambda per rate point. With two or more, each point has its own
    # latent gains and prior embedding and `lmbda` is unused; empty: one rate (lmbda).
    lambdas: tuple[float, ...] = ()

    # bottom latent at stride 16, top latent at stride 64
    bottom_stride = 16
    top_stride = 64

    @property
    def rate_points(self) -> int:
        return max(1, len(self.lambdas))

    def point_lambdas(self) -> tuple[float, ...]:
        return self.lambdas or (self.lmbda,)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw = json.loads(text)
        raw["bottom"] = LevelConfig(**raw["bottom"])
        raw["top"] = LevelConfig(**raw["top"])
        raw["lambdas"] = tuple(raw.get("lambdas", ()))
        return cls(**raw)
