"""Every variant fits a phone with every ``<style>`` removed (fluid-hybrid), in Chromium.

Many webmail and Android clients drop ``<style>`` blocks: the layout must hold with the inline
styles alone. Each variant and layout is opened at 390 px, after removing every ``<style>``
element, and the page must not scroll sideways. A small script of the test's own, added to
the page (never to a mail), reports the widths; a 640 px table is the positive control.
"""

from __future__ import annotations

import html as htmllib
import re
import subprocess
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots
from mailer.render.variant import RenderContext, render_variant
from tests.render.conftest import digest_edition, single_edition
from tests.render.test_browser import FLAGS, _chromium, _require_cjk_fonts

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHOICES = ["zh-Hans", "zh-Hant", "en", "zh-Hans+en", "zh-Hant+en"]
_STYLE = re.compile(r"<style\b[^>]*>.*?</style\s*>", re.I | re.S)
# Headless Chromium will not open a window under 500 px, so the mail is laid out in an iframe
# of the width asked (a srcdoc frame: same origin as the test's page, which measures it).
_FRAME = (
    '<!DOCTYPE html><html><body style="margin:0">'
    '<iframe id="mail" style="border:0;width:{width}px;height:900px" srcdoc="{doc}"></iframe>'
    "<script>window.addEventListener('load', function () {{"
    "var f = document.getElementById('mail');"
    "document.body.setAttribute('data-probe', f.contentDocument.documentElement.scrollWidth"
    " + 'x' + f.contentWindow.innerWidth);}});</script></body></html>"
)


def _html(ctx: RenderContext, layout: str, choice: str) -> str:
    edition = digest_edition() if layout == "digest" else single_edition()
    variant = render_variant(edition, choice, ctx)
    template = MessageTemplate.build(variant, edition_id=7, headers=HeaderSettings(
        from_addr="d@example.org", list_id="<l.example.org>", message_id_domain="example.org"))
    raw = template.personalise(PersonalSlots(
        subscriber_id=1, address="r@example.com",
        unsubscribe_url="https://news.example.org/u/" + "T" * 43,
        # Real mirror bases are long: a long one must wrap, not widen the page.
        mirrors=("https://d1a2b3c4e5f6g7.cloudfront.net",
                 "https://storage.googleapis.com/citizens-rights-mirror-7f3a9b")))
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def _measure(tmp_path: Path, html: str, width: int, name: str) -> tuple[int, int]:
    """(scrollWidth, innerWidth) of ``html`` with no <style>, in a ``width`` px window."""
    stripped = _STYLE.sub("", html)
    assert "<style" not in stripped.lower()
    page = tmp_path / f"{name}.html"
    page.write_text(_FRAME.format(width=width, doc=htmllib.escape(stripped, quote=True)),
                    encoding="utf-8")
    result = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / ('profile-' + name)}",
         "--window-size=1000,1000", "--virtual-time-budget=3000", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'data-probe="(\d+)x(\d+)"', result.stdout)
    assert found is not None, result.stdout[-2000:]
    return int(found.group(1)), int(found.group(2))


@pytest.mark.parametrize("layout", ["digest", "post"])
@pytest.mark.parametrize("choice", CHOICES)
def test_no_style_fits_390px(tmp_path: Path, ctx: RenderContext, layout: str,
                             choice: str) -> None:
    _require_cjk_fonts()
    html = _html(ctx, layout, choice)
    assert 'width="640"' not in html  # the fixed-width sheet is gone
    scroll, inner = _measure(tmp_path, html, 390, f"{layout}-{choice}")
    assert inner == 390, f"the window is {inner} px wide, not 390: the check would mean nothing"
    assert scroll <= 390, f"{layout} {choice} with no <style> is {scroll} px wide at 390 px"


def test_no_style_fits_320_and_stays_640_at_800(tmp_path: Path, ctx: RenderContext) -> None:
    _require_cjk_fonts()
    html = _html(ctx, "digest", "zh-Hant+en")
    scroll, _ = _measure(tmp_path, html, 320, "narrow")
    assert scroll <= 320
    # At 800 px the sheet stops at its max-width: the page does not scroll either.
    scroll, inner = _measure(tmp_path, html, 800, "wide")
    assert scroll <= inner


def test_the_check_catches_a_fixed_width_sheet(tmp_path: Path) -> None:
    """Positive control: the old 640 px table, styles stripped, overflows at 390 px."""
    _require_cjk_fonts()
    html = ('<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width">'
            '</head><body><table width="640"><tr><td>公民权利通讯</td></tr></table></body></html>')
    scroll, inner = _measure(tmp_path, html, 390, "control")
    assert inner == 390
    assert scroll > 390
