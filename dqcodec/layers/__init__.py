"""Network layers of the codec: GDN, strided convolutions, and the integer arithmetic of the
integer prior."""

from dqcodec.layers.convolutions import SubpixelDeconv, conv, deconv
from dqcodec.layers.gdn import GDN

__all__ = ["GDN", "SubpixelDeconv", "conv", "deconv"]
