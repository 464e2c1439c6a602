"""AUDOBON_HOME and the secret key kept in it."""

import os
import stat

import pytest

from audobon_site.home import SUBDIRS, audobon_home, secret_key


def test_secret_key_is_made_once_private_and_reused(tmp_path):
    key = secret_key(tmp_path)
    path = tmp_path / "secret_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(key) >= 50
    assert secret_key(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temp file left


def test_an_unusable_key_file_is_named(tmp_path):
    (tmp_path / "secret_key").write_text("short")
    with pytest.raises(RuntimeError, match="secret_key holds no usable secret key"):
        secret_key(tmp_path)


def test_home_comes_from_the_environment_with_its_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDOBON_HOME", str(tmp_path / "h"))
    home = audobon_home()
    assert home == (tmp_path / "h").resolve()
    assert all((home / sub).is_dir() for sub in SUBDIRS)
