"""Fixtures for rendering tests: a config, a bilingual edition, a strict render context."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailer.config import Config, load_config
from mailer.models import Edition, EditionState, Post
from mailer.render.variant import RenderContext

ORIGIN = "https://citizens-rights.blogspot.com"
BUILD_DATE = datetime(2026, 11, 23, 0, 30, tzinfo=UTC)

CONFIG = """
[newsletter]
from = "Citizens' Rights Digest <digest@example.org>"
public_url = "https://news.example.org"
languages = ["zh-Hans", "zh-Hant", "en"]
bilingual = ["zh-Hans+en", "zh-Hant+en"]
taiwan_phrases = {taiwan}

[newsletter.name]
en = "Citizens' Rights Digest"
zh-Hans = "公民权利通讯"
zh-Hant = "公民權利通訊"

[storage]
database = "sqlite:///data/newsletter.db"

[schedule]
timezone = "Asia/Shanghai"

[delivery]
transport = "maildir"

[mirrors]
origins = ["{origin}"]
per_recipient = 2

[[mirrors.sites]]
url = "https://d1a2b3c4.cloudfront.net"

[[mirrors.sites]]
url = "https://mirror-two.netlify.app"

[[mirrors.sites]]
url = "http://citizensrightsxyzabc2345abcdefghijklmnopqrstuvwxyzabcdef.onion"
kind = "onion"
"""


def write_config(tmp: Path, *, taiwan: bool = True) -> Config:
    path = tmp / "newsletter.toml"
    path.write_text(
        CONFIG.replace("{origin}", ORIGIN).replace("{taiwan}", "true" if taiwan else "false"),
        encoding="utf-8",
    )
    return load_config(path)


def sample_posts() -> tuple[Post, ...]:
    return (
        Post(
            guid="tag:blogger.com,1999:post-1",
            title="维权律师的软件与信息安全",
            content_html=(
                "<p>我们为维权律师提供了新的软件培训，帮助他们保护信息安全。</p>"
                f'<p>详情见<a href="{ORIGIN}/2026/11/training.html">培训说明</a>，'
                '以及<a href="https://example.net/guide">外部指南</a>。</p>'
                "<ul><li>第一条：使用加密通讯</li><li>第二条：定期更新系统</li></ul>"
            ),
            language="zh-Hans",
            link=f"{ORIGIN}/2026/11/lawyers.html",
            published=datetime(2026, 11, 20, 2, 0, tzinfo=UTC),
        ),
        Post(
            guid="tag:blogger.com,1999:post-2",
            title="Court hearing postponed again",
            content_html=(
                "<p>The hearing of the <b>twelve defendants</b> was postponed for the third time.</p>"
                f'<p>Background: <a href="{ORIGIN}/2026/10/background.html">our earlier report</a>.</p>'
                "<blockquote><p>We will keep waiting, said a relative.</p></blockquote>"
            ),
            language="en",
            link=f"{ORIGIN}/2026/11/hearing.html",
            published=datetime(2026, 11, 21, 9, 0, tzinfo=UTC),
        ),
        Post(
            guid="tag:blogger.com,1999:post-3",
            title="臺灣的聲援活動與網路資訊",
            content_html="<p>這是一篇繁體中文的文章，介紹臺灣的聲援活動和網路上的相關資訊。</p>",
            language="zh-Hant",
            link=f"{ORIGIN}/2026/11/taiwan.html",
            published=datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
        ),
        Post(
            guid="tag:blogger.com,1999:post-4",
            title="双语声明 Joint statement",
            content_html=(
                "<p>我们发表联合声明，要求释放被关押的人权捍卫者。</p>"
                "<p>We publish a joint statement calling for the release of detained defenders.</p>"
            ),
            language="mixed",
            link=f"{ORIGIN}/2026/11/statement.html",
            published=datetime(2026, 11, 22, 15, 0, tzinfo=UTC),
        ),
    )


def digest_edition(posts: tuple[Post, ...] | None = None) -> Edition:
    return Edition(
        id=7, kind="digest", state=EditionState.APPROVED, posts=posts if posts is not None else sample_posts()
    )


def single_edition(post: Post | None = None) -> Edition:
    return Edition(id=8, kind="post", state=EditionState.APPROVED, posts=(post or sample_posts()[0],))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return write_config(tmp_path)


@pytest.fixture
def ctx(config: Config) -> RenderContext:
    return RenderContext.from_config(config, date=BUILD_DATE, strict=True)
