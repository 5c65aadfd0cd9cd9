"""The version, the changelog and the files kept from each release agree."""

import re
from pathlib import Path

import dqcodec

ROOT = Path(__file__).resolve().parents[1]


def released_versions() -> list[str]:
    text = (ROOT / "CHANGELOG.md").read_text()
    return re.findall(r"^## \[(\d+\.\d+\.\d+)\]", text, flags=re.M)


def test_the_newest_release_in_the_changelog_is_the_package_version():
    versions = released_versions()
    assert versions and versions[0] == dqcodec.__version__


def test_files_are_kept_from_every_release():
    """tests/test_integer_prior.py decodes them; a release without kept files is an error."""
    kept = {p.name.split("-")[1] for p in (ROOT / "tests" / "data").glob("release-*.dq")}
    assert set(released_versions()) <= kept
