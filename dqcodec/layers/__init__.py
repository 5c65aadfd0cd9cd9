"""Network layers of the codec: GDN, strided convolutions, and the integer arithmetic of the
integer prior."""

from .convolutions import SubpixelDeconv, conv, deconv
from .gdn import GDN

__all__ = ["GDN", "SubpixelDeconv", "conv", "deconv"]
