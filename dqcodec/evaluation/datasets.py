"""Evaluation data sets: the Kodak set (downloaded and checked on first use) or a folder of
images."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dqcodec.errors import DQError
from dqcodec.image_io import IMAGE_SUFFIXES

KODAK_URL = "http://r0k.us/graphics/kodak/kodak/"

# SHA-256 of each Kodak image, as served at KODAK_URL.
KODAK_SHA256: dict[str, str] = {
    "kodim01.png": "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    "kodim02.png": "4f4b74a79237e311d72cad958237b5f7088d8bce1c82305ebefe1a70e3022dfd",
    "kodim03.png": "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
    "kodim04.png": "e3b946107c5d3441c022f678d0c3caf1e224d81b1604ba840a4f88e562de61aa",
    "kodim05.png": "10349e963c5c813d327852f82c1795fa4148d69fedffc4c589bee458e3ac3d53",
    "kodim06.png": "363510303b715d4cbc384e1ce227e466b613a09e1b71ae985882bf8e7fbd9b18",
    "kodim07.png": "b77d3f006f42414bb242222e0482e750c0fb9e5ee8d4bed2f6f11c5605fe54a4",
    "kodim08.png": "ba23983c76b4832ee0e8af0592664756841a16779acd69f792e268fb6d13d6e7",
    "kodim09.png": "6a4361c2fc194feb4edaa9f9a4a0620fb9943e460ac7fdf037fb0f6dd6607a7d",
    "kodim10.png": "9dfb70f5867c29ff9ed6313683f19b3d867849e40fbc0c4c54a4a89df341cf23",
    "kodim11.png": "7936814b58b5387fce2e4e2488b4ec830dadd95fa9520f358ddb30990b50f2b6",
    "kodim12.png": "d78c37c2f04f23761ed2367dd77e2db584ddd4c3950833fecf89f199a8126980",
    "kodim13.png": "bc34a3ce58dea09dce1704c997171602de90cb34d0c8503a988b77f473d39b08",
    "kodim14.png": "55a94550ff18f3246c4074fd32b77b0c74447c26b6ad274d564d999c0450ba6e",
    "kodim15.png": "7538cbb80cb9103606c48b806eae57d56c885c7f90b9b3be70a41160f9cbb683",
    "kodim16.png": "a89c7268ccd4718ba424a99fc4643c572cf692ca6eae887185ceb4e9f11d2e54",
    "kodim17.png": "37afcc89fbdcb76d9518e04b2fc011027e2f4cd14b3b2f83cefd721641a47c5b",
    "kodim18.png": "1a9258c365988961d87a0598725b609139c303ad48a5aad6c503c3b1a87849aa",
    "kodim19.png": "b7450b264b1b0a411390d8931b112c27905a992520fc90569dc4b920aa32bbdc",
    "kodim20.png": "3b46c71e3b92a563820ba32936be8330c586c41f938efd94be938386aae4328a",
    "kodim21.png": "ac958597c82073f6bb65129c68f72b651db5b9efd82e11547d07350214bc268b",
    "kodim22.png": "1cee58eb1f2d9c7ebb254d208a03c783ce6cf2c4d8c2cf45e235dd23b4ce1b29",
    "kodim23.png": "e3111a2fd4da24af15d6459ef9eacfe54106b38e27b4a21821b75c3f5d2d5baf",
    "kodim24.png": "1071c68372cc5a01435c2c225a5cf7d4bb803846ec08bb6b3d6721b156d7cb96",
}

DATASETS = ("kodak",)
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 16


class DatasetError(DQError):
    """A data set could not be found, downloaded or verified."""


def default_cache_dir() -> Path:
    """$DQCODEC_DATA if set, else $XDG_CACHE_HOME/dqcodec (default ~/.cache/dqcodec)."""
    explicit = os.environ.get("DQCODEC_DATA")
    if explicit:
        return Path(explicit).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache_home).expanduser() if cache_home else Path.home() / ".cache"
    return base / "dqcodec"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_matches(path: Path, digest: str) -> bool:
    """True when path is a readable file with this SHA-256 (hex)."""
    try:
        return path.is_file() and _sha256(path) == digest
    except OSError:
        return False


def list_images(folder: Path) -> list[Path]:
    """Sorted image files directly inside `folder` (hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _check_image_folder(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"data directory {folder} does not exist or is not a directory")
    images = list_images(folder)
    if not images:
        suffixes = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise DatasetError(f"data directory {folder} contains no images ({suffixes})")
    return images


def _download(url: str, target: Path, digest: str) -> None:
    """Fetch `url` into `target` atomically.

    The file is only put in place if its SHA-256 is `digest`.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        hasher = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    while chunk := response.read(_CHUNK):
                        hasher.update(chunk)
                        out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise DatasetError(
                f"could not download {target.name} from {url}: "
                f"HTTP {exc.code} {_one_line(exc.reason)}"
            ) from None
        except urllib.error.URLError as exc:
            raise DatasetError(
                f"could not download {target.name} from {url}: {_one_line(exc.reason)}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            reason = _one_line(exc) or type(exc).__name__
            raise DatasetError(f"could not download {target.name} from {url}: {reason}") from None
        got = hasher.hexdigest()
        if got != digest:
            raise DatasetError(
                f"checksum mismatch for {target.name} downloaded from {url}: "
                f"expected SHA-256 {digest}, got {got}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def kodak_dir(
    data_dir: Path | None = None,
    download: bool = True,
    base_url: str = KODAK_URL,
    progress: bool = True,
) -> Path:
    """Folder holding the 24 Kodak images.

    With `data_dir`, that folder is returned as is (it must contain images). Otherwise the images
    live in default_cache_dir()/"kodak"; any missing or corrupt file is (re)downloaded from
    `base_url` and verified against KODAK_SHA256 unless `download` is False.
    """
    if data_dir is not None:
        folder = Path(data_dir)
        _check_image_folder(folder)
        return folder

    folder = default_cache_dir() / "kodak"
    needed = [
        name for name, digest in KODAK_SHA256.items() if not file_matches(folder / name, digest)
    ]
    if not needed:
        return folder
    if not download:
        raise DatasetError(
            f"{len(needed)} of {len(KODAK_SHA256)} Kodak images missing or corrupt in {folder} "
            f"(first: {needed[0]}); allow downloading or pass a data directory"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create data directory {folder}: {_one_line(exc)}") from None
    base = base_url.rstrip("/") + "/"
    with tqdm(
        total=len(needed), desc="Downloading Kodak", unit="file", disable=not progress
    ) as bar:
        for name in needed:
            bar.set_postfix_str(name, refresh=False)
            _download(base + name, folder / name, KODAK_SHA256[name])
            bar.update(1)
    return folder


def resolve_dataset(name: str, data_dir: Path | None) -> list[Path]:
    """Sorted image paths of data set `name`, or of the images in `data_dir` when given."""
    if data_dir is not None:
        return _check_image_folder(Path(data_dir))
    if name.lower() == "kodak":
        folder = kodak_dir()
        return sorted(folder / file_name for file_name in KODAK_SHA256)
    raise DatasetError(
        f"unknown data set {name!r} (known: {', '.join(DATASETS)}); pass a data directory instead"
    )
