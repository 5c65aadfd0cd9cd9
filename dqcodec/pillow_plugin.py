"""A Pillow plugin for .dq files, registered by `import dqcodec`:

    Image.open("photo.dq").load()                  # decodes with the model the file names
    image.save("photo.dq", quality=5, effort=1)    # encodes with a shipped quality level

Opening reads only the header (size and mode); the codec and torch load when the pixels are
first needed. Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) applies as for
any format.
"""

from __future__ import annotations

from PIL import Image, ImageFile

from dqcodec.container import HEADER_SIZE, MAGIC, DQFile, FormatError

FORMAT = "DQ"


def _accept(prefix: bytes) -> bool:
    return prefix[: len(MAGIC)] == MAGIC


class DQImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "dqcodec learned image"

    def _open(self) -> None:
        data = self.fp.read()
        if len(data) < HEADER_SIZE or not _accept(data):
            raise SyntaxError("not a .dq file")
        try:
            dq = DQFile.from_bytes(data)
        except FormatError as exc:
            raise SyntaxError(str(exc)) from None
        self._size = (dq.width, dq.height)
        self._mode = dq.mode
        self.info["dq_version"] = dq.version
        self.info["quality"] = dq.quality
        self.tile = [("dq", (0, 0, dq.width, dq.height), 0, data)]  # the decoder's argument


class DQDecoder(ImageFile.PyDecoder):
    """Decodes the whole file at once: the tile's argument holds its bytes, read in _open."""

    _pulls_fd = True  # no data is fed: the file was already read

    def decode(self, buffer):
        from dqcodec.decoding import decoder_for_file

        (data,) = self.args
        limit = Image.MAX_IMAGE_PIXELS
        max_pixels = 1 << 62 if limit is None else 2 * limit  # Pillow's own error threshold
        image = decoder_for_file(data).decode(data, max_pixels=max_pixels)
        self.set_as_raw(image.tobytes())
        return -1, 0


def _save(image: Image.Image, fp, filename) -> None:
    from dqcodec.codec import load_codec
    from dqcodec.options import DEFAULT_EFFORT

    quality = image.encoderinfo.get("quality")
    effort = image.encoderinfo.get("effort", DEFAULT_EFFORT)
    fp.write(load_codec(quality).encode(image, effort))


def register() -> None:
    Image.register_open(FORMAT, DQImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".dq")
    Image.register_mime(FORMAT, "image/x-dq")
    Image.register_decoder("dq", DQDecoder)
