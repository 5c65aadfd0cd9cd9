import pytest

from dqcodec.testing import photo, tiny_model  # noqa: F401  (tests import them from here)
from dqcodec.zoo import save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(tiny_model(0), path)
    return path


@pytest.fixture(scope="module")
def other_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "other.safetensors"
    save_model(tiny_model(1), path)
    return path


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    photo(96, 80, 1).save(folder / "a.png")
    photo(130, 70, 2).save(folder / "b.png")
    return folder


@pytest.fixture
def training_photos(tmp_path):
    """A folder of six 200x200 photos: enough for every crop size and a validation split."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        photo(200, 200, i).save(folder / f"{i}.png")
    return folder


@pytest.fixture(autouse=True)
def _user_facing_errors(monkeypatch):
    """The CLI turns errors into one line unless DQCODEC_DEBUG is set; test what users see."""
    monkeypatch.delenv("DQCODEC_DEBUG", raising=False)
