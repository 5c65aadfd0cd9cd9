"""Network layers of the codec: GDN, strided convolutions, and the integer arithmetic of the
integer prior (fixed_point, NumPy only). The torch layers load on first use, so that the
decoder's NumPy path imports no torch."""

__all__ = ["GDN", "SubpixelDeconv", "conv", "deconv"]


def __getattr__(name: str):
    if name == "GDN":
        from dqcodec.layers.gdn import GDN

        return GDN
    if name in ("SubpixelDeconv", "conv", "deconv"):
        from dqcodec.layers import convolutions

        return getattr(convolutions, name)
    raise AttributeError(f"module 'dqcodec.layers' has no attribute {name!r}")
