import numpy as np
import pytest
import torch
from conftest import photo, tiny_model
from PIL import Image

from dqcodec.codec import Codec, load_codec
from dqcodec.container import DQFile
from dqcodec.errors import DQError
from dqcodec.image_io import to_tensor
from dqcodec.models.dq import pad_to_stride


@pytest.fixture(scope="module")
def codec():
    return Codec(tiny_model(0))


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (37, 1), (64, 64), (100, 67)])
def test_roundtrip_any_size(codec, size):
    image = photo(*size)
    data = codec.encode(image)
    decoded = codec.decode(data)
    assert decoded.size == image.size and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(codec.decode(data)), np.asarray(decoded))


def test_decoder_reproduces_encoder_reconstruction(codec):
    """The decoder rebuilds exactly the latent the encoder chose."""
    image = photo(130, 70, 3)
    x = pad_to_stride(to_tensor(image), 64)
    with torch.inference_mode():
        enc = codec.model.compress(x)
        dec = codec.model.decompress(enc["strings"], enc["shape"])
    for level in ("top", "bottom"):
        assert torch.equal(enc["indices"][level], dec["indices"][level])
    assert dec["indices"]["bottom"].unique().numel() > 1  # the test exercises real symbols


def test_same_input_same_bytes(codec):
    image = photo(90, 90, 4)
    assert codec.encode(image) == codec.encode(image)


def test_header_fields(codec):
    data = codec.encode(photo(100, 67))
    dq = DQFile.from_bytes(data)
    assert (dq.width, dq.height, dq.mode) == (100, 67, "RGB")
    assert dq.model_id == codec.model_id


def test_coded_size_matches_cross_entropy():
    """Range coding costs what the prior says (beyond a few bytes of flushing)."""
    codec = Codec(tiny_model(0))
    result = codec.encode_image(photo(256, 256, 5))
    dq = DQFile.from_bytes(result.data)
    payload_bits = 8 * (len(dq.top) + len(dq.bottom))
    assert payload_bits >= result.information_bits
    assert payload_bits - result.information_bits < 0.01 * result.information_bits + 64


def test_grey_and_alpha_modes(codec):
    grey = photo(50, 40).convert("L")
    out = codec.decode(codec.encode(grey))
    assert out.mode == "L" and out.size == grey.size

    rgba = photo(50, 40).convert("RGBA")
    alpha = Image.fromarray((np.arange(2000).reshape(40, 50) % 256).astype(np.uint8))
    rgba.putalpha(alpha)
    out = codec.decode(codec.encode(rgba))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))


def test_wrong_model_is_refused(codec):
    data = codec.encode(photo(40, 40))
    other = Codec(tiny_model(1))
    with pytest.raises(DQError, match="encoded with model"):
        other.decode(data)


def test_load_codec_refuses_pickle(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(DQError, match="not a safetensors"):
        load_codec(path=path)


def test_row_blocks_give_the_same_codes(codec, monkeypatch):
    """Large latents are coded a block of rows at a time; the chosen codes do not change."""
    import dqcodec.entropy_models.passes as passes

    image = photo(200, 150, 6)
    whole = codec.decode(codec.encode(image))
    monkeypatch.setattr(passes, "LOGIT_BUDGET", 1 << 10)
    assert len(codec.model.bottom._row_blocks(1, 16, 4)) > 1
    data = codec.encode(image)
    assert np.array_equal(np.asarray(codec.decode(data)), np.asarray(whole))


def test_training_rate_matches_coded_information(codec, monkeypatch):
    """Training computes each level's logits in one block; coding cuts them into row
    blocks. Both choose the same codes and count the same information."""
    import dqcodec.entropy_models.passes as passes

    monkeypatch.setattr(passes, "LOGIT_BUDGET", 1 << 10)
    assert len(codec.model.bottom._row_blocks(1, 8, 8)) > 1
    x = to_tensor(photo(128, 128, 7))
    with torch.no_grad():
        trained = codec.model(x)
    coded = codec.model.compress(x)
    assert float(sum(trained["bits"].values())) == pytest.approx(
        coded["information_bits"], rel=1e-4
    )


def test_api_decode_takes_bytes_paths_and_binary_files(tmp_path):
    import io

    import dqcodec

    data = dqcodec.encode(photo(64, 48))
    path = tmp_path / "a.dq"
    path.write_bytes(data)
    expected = np.asarray(dqcodec.decode(data))
    for source in (path, str(path), io.BytesIO(data), bytearray(data)):
        assert np.array_equal(np.asarray(dqcodec.decode(source)), expected)
    with open(path, encoding="latin-1") as text:
        with pytest.raises(TypeError, match="binary mode"):
            dqcodec.decode(text)
    with pytest.raises(TypeError, match="use dqcodec.decode"):
        dqcodec.encode(data)
    with pytest.raises(TypeError, match="not int"):
        dqcodec.decode(3)


def test_package_exposes_only_its_api_and_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, dqcodec; print(sorted(dqcodec.__all__) == sorted(dir(dqcodec)), "
        "'torch' in sys.modules, 'compressai' in dir(dqcodec))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["True", "False", "False"]


def test_encoding_and_decoding_do_not_import_compressai():
    """compressai's package import takes seconds (its point-cloud datasets); the codec a user
    runs needs none of it."""
    import subprocess
    import sys

    code = (
        "import sys, dqcodec; from PIL import Image; "
        "image = Image.new('RGB', (40, 24), (90, 140, 30)); "
        "dqcodec.decode(dqcodec.encode(image, quality=1)); print('compressai' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False"]
