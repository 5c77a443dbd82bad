"""Nothing personal in the archive: a byte search for every reader's address, token and mirrors.

The archive is public by design, on hosts we do not control: an address, an unsubscribe token
or a reader's mirror set in it would hand the censor the list, or the mirrors to block.
"""

from __future__ import annotations

import base64
from pathlib import Path

from mailer.app import App
from tests.archive.helpers import READERS, archive_config, send_editions, site_files
from tests.support.cli import newsletter

ARCHIVE = """
[archive]

[[archive.targets]]
remote = "public"
url = "https://cr-archive.pages.dev"
"""


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.upper(), raw.lower(), base64.b64encode(raw), value.encode("utf-16-le")]


def test_no_address_token_or_mirror_in_any_archive_file(tmp_path: Path, sqlite_url: str) -> None:
    config = archive_config(tmp_path, sqlite_url, archive=ARCHIVE)
    send_editions(config, 2)
    result = newsletter(config, "archive", "build")
    assert result.returncode == 0, result.stderr
    files = site_files(tmp_path / "data" / "archive")
    assert len(files) > 8
    app = App.from_path(config, environ={})
    needles: dict[str, list[bytes]] = {}
    for address, _ in READERS:
        needles[address] = _forms(address)
        local, _, _domain = address.partition("@")
        needles[f"local part of {address}"] = [local.encode() + b"@"]
    ids = list(app.subscribers.stream_active_ids())
    assert len(ids) == len(READERS)
    for sid in ids:
        token = app.tokens.unsubscribe_token(sid)
        needles[f"token of {sid}"] = [token.encode(), f"/u/{token}".encode()]
        for mirror in app.mirrors.for_subscriber(sid):
            needles[f"mirror {mirror}"] = [*_forms(mirror), mirror.split("//", 1)[1].encode()]
    for site in app.config.mirrors.sites:
        if site.kind != "archive":
            needles[f"mirror {site.url}"] = [site.url.split("//", 1)[1].encode()]
    for path, data in files.items():
        for what, forms in needles.items():
            for form in forms:
                assert form not in data, f"{path} contains the {what}"
        assert b"/u/" not in data, f"{path} has an unsubscribe link"
        assert b"@@SLOT" not in data
    app.engine.dispose()
