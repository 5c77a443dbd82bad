"""The key file: creation, refusal to overwrite, permissions, damage, passphrase."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from subscribers.errors import KeyStoreError
from subscribers.keys import KeyRing


def test_create_writes_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "outside" / "keys.json"
    ring = KeyRing.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        KeyRing.create(path)
    assert path.read_bytes() == before
    loaded = KeyRing.load(path)
    assert loaded.current == ring.current
    assert {loaded.index_key, loaded.token_key, loaded.master, loaded.current_key.key} == {
        ring.index_key, ring.token_key, ring.master, ring.current_key.key}
    assert len({ring.index_key, ring.token_key, ring.master, ring.current_key.key}) == 4


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match=r"not found.*keys init") as exc:
        KeyRing.load(tmp_path / "nope.json")
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("cut", [0, 1, 40, -30])
def test_truncated_key_file_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "keys.json"
    KeyRing.create(path)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(KeyStoreError, match=r"truncated|empty|damaged"):
        KeyRing.load(path)


def test_shortened_key_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    KeyRing.create(path)
    doc = json.loads(path.read_text())
    doc["index"] = doc["index"][:20]
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError, match="index"):
        KeyRing.load(path)


def test_passphrase_seals_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing.create(path, "correct horse", scrypt_n=2**10)
    text = path.read_text()
    assert ring.current not in text  # nothing readable without the passphrase
    assert KeyRing.load(path, "correct horse").index_key == ring.index_key
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyRing.load(path, "wrong horse")
    with pytest.raises(KeyStoreError, match="passphrase"):
        KeyRing.load(path, None)


def test_derive_is_stable_and_separated(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing.create(path)
    again = KeyRing.load(path)
    assert ring.derive(b"mirror") == again.derive(b"mirror")
    assert ring.derive(b"mirror") != ring.derive(b"backup")
    assert ring.with_new_key().derive(b"mirror") == ring.derive(b"mirror")


def test_load_or_create_says_so_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys.json"
    notes: list[str] = []
    ring = KeyRing.load_or_create(path, None, notes.append)
    assert len(notes) == 1
    assert "0600" in notes[0]
    assert str(path) in notes[0]
    assert KeyRing.load_or_create(path, None, notes.append).current == ring.current
    assert len(notes) == 1


def test_load_or_create_refuses_when_rows_need_the_old_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(KeyStoreError, match="restore the key file"):
        KeyRing.load_or_create(path, None, print, may_create=lambda: False)
    assert not path.exists()


def test_save_keeps_mode_and_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing.create(path)
    newer = ring.with_new_key()
    newer.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = KeyRing.load(path)
    assert loaded.current == newer.current
    assert ring.current in loaded.aead
    retired = loaded.without_keys({ring.current})
    assert ring.current not in retired.aead
    with pytest.raises(KeyStoreError):
        loaded.without_keys({loaded.current})
