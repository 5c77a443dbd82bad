"""A rendered message opened in headless Chromium shows its CJK text (DOM and pixels).

Needs Debian's ``chromium`` and ``fonts-noto-cjk`` (``.ci/run`` installs both). Where either is
missing (a user's machine without root) the test skips and says which.
"""

from __future__ import annotations

import shutil
import subprocess
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots
from mailer.render.variant import RenderContext, render_variant
from tests.render.conftest import digest_edition

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH: install Debian's 'chromium' (as .ci/run does) to run this")


def _require_cjk_fonts() -> None:
    fc = shutil.which("fc-list")
    if fc is None:
        pytest.skip("fc-list (fontconfig) is missing, so CJK fonts cannot be checked")
    out = subprocess.run([fc, ":lang=zh"], capture_output=True, text=True, timeout=30).stdout
    if "cjk" not in out.lower():
        pytest.skip("no CJK font installed: install 'fonts-noto-cjk' (as .ci/run does)")


def _html_part(ctx: RenderContext, language: str) -> str:
    variant = render_variant(digest_edition(), language, ctx)
    template = MessageTemplate.build(
        variant,
        edition_id=7,
        headers=HeaderSettings(from_addr="d@example.org", list_id="<l.example.org>", message_id_domain="example.org"),
    )
    raw = template.personalise(
        PersonalSlots(
            subscriber_id=1,
            address="r@example.com",
            unsubscribe_url="https://news.example.org/u/x",
            mirrors=("https://m1.example.net", "https://m2.example.net"),
        )
    )
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def _run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("zh-Hans", "维权律师的软件与信息安全"),
        ("zh-Hant", "維權律師的軟體與資訊安全"),
    ],
)
def test_chromium_shows_cjk_text(tmp_path: Path, ctx: RenderContext, language: str, expected: str) -> None:
    binary = _chromium()
    _require_cjk_fonts()
    page = tmp_path / "message.html"
    page.write_text(_html_part(ctx, language), encoding="utf-8")
    url = page.as_uri()

    dom = _run(binary, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert expected in dom.stdout
    assert "<script" not in dom.stdout.lower()

    shot = tmp_path / "shot.png"
    result = _run(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=800,900", url)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as img:
        gray = img.convert("L")
        stat = ImageStat.Stat(gray)
        assert stat.stddev[0] > 10, "the screenshot is blank"
        # Text is dark on light: a page that rendered its words has a fair share of dark pixels.
        dark = sum(gray.histogram()[:100])
        assert dark > 0.002 * gray.width * gray.height, "no text visible in the screenshot"
