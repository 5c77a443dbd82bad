"""Sent editions become a static site: pure, deterministic, relative, nothing personal.

Layout (every link relative, and to a file, never a folder, so ``file://`` works too)::

    index.html              the language chooser
    <lang>/index.html       that language's editions, newest first
    <lang>/<id>.html        one edition (:func:`edition_page` is the one owner of this path)
    <lang>/feed.atom        the Atom feed of that language's editions
    images/<sha>.<ext>      the posts' images, once each, shared by every language

The pages render from the same edition data, templates (``email/_post.html``) and catalog as
the mail, in the web layout of ``templates/archive/``. Nothing here sees a subscriber: no slot,
no mirror set, no token, no count. Building twice gives the same bytes (no build time anywhere),
so a sync uploads only what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from jinja2 import Environment
from markupsafe import Markup

from mailer.errors import RenderError
from mailer.mirrors.health import ARCHIVE_MARKER
from mailer.models import Edition, InlineImage
from mailer.render.catalog import Translator, catalog_for
from mailer.render.safe import remote_references
from mailer.render.variant import RenderContext, WebEdition, web_edition

__all__ = [
    "ArchivedEdition",
    "SiteSettings",
    "build_site",
    "edition_page",
    "image_name",
    "page_links",
]

_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


@dataclass(frozen=True)
class ArchivedEdition:
    """A sent edition and what its page needs: the date it went out and its fetched images."""

    edition: Edition
    sent_at: datetime
    images: Mapping[str, InlineImage] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class SiteSettings:
    """What the site shows besides editions: its languages, its hosts, the subscribe address."""

    languages: tuple[str, ...]
    hosts: tuple[str, ...] = ()
    subscribe_mailto: str | None = None
    public_url: str = ""


def edition_page(language: str, edition_id: int) -> str:
    """The page of one edition, relative to the archive's root: ``zh-Hans/7.html``."""
    return f"{language}/{edition_id}.html"


def page_links(hosts: Sequence[str], language: str, edition_id: int) -> tuple[tuple[str, str], ...]:
    """``(host, url)`` of an edition's page on each archive host, for the mail's footer."""
    page = edition_page(language.split("+", 1)[0], edition_id)
    return tuple((urlsplit(h).hostname or h, f"{h}/{page}") for h in hosts)


def image_name(image: InlineImage) -> str:
    """An image's file name: its content's hash, so the same image is one file whatever uses it."""
    ext = _EXT.get(image.content_type, "bin")
    return f"{hashlib.sha256(image.data).hexdigest()[:24]}.{ext}"


def _feed_id(public_url: str, *parts: object) -> str:
    # Stable across builds and hosts: a feed reader must not see an edition as new again
    # because it was read from another archive host.
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join([public_url, "archive", *map(str, parts)])).urn


def _atom_time(when: datetime) -> str:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Page:
    """One edition in one language, as the templates see it."""

    id: int
    file: str
    web: WebEdition
    updated: str
    atom_id: str
    content: Markup


def _relative_images(web: WebEdition, prefix: str) -> tuple[WebEdition, dict[str, bytes]]:
    """Swap each ``cid:`` for the image's file beside the pages, and return those files."""
    files: dict[str, bytes] = {}
    mapping: dict[str, str] = {}
    for image in web.images:
        name = image_name(image)
        files[f"images/{name}"] = image.data
        mapping[f'src="cid:{image.cid}"'] = f'src="{prefix}images/{name}"'

    def swap(html: Markup) -> Markup:
        text = str(html)
        for old, new in mapping.items():
            text = text.replace(old, new)
        return Markup(text)  # noqa: S704  (our own cleaned HTML with our own paths swapped in)

    posts = tuple(dataclasses.replace(p, html=swap(p.html)) for p in web.posts)
    return dataclasses.replace(web, posts=posts), files


def _translator(catalog: Translator) -> Callable[..., str]:
    def translate(message: str, **values: object) -> str:
        return catalog.translate(message, values)

    return translate


# The one <link> a page has (templates/archive/base.html): an empty inline icon, so browsers do
# not fetch /favicon.ico from the host, outside the archive's folder. It loads nothing.
_NO_ICON = '<link rel="icon" href="data:,">'


def _check(path: str, document: str) -> None:
    """Nothing remote, nothing that runs: the mail's own check, the empty icon aside."""
    found = remote_references(document.replace(_NO_ICON, ""))
    if found:
        raise RenderError(f"archive page {path} is not self-contained: {', '.join(found)}")


def _render(env: Environment, template: str, values: Mapping[str, object]) -> str:
    try:
        return env.get_template(template).render(values)
    except RenderError:
        raise
    except Exception as exc:  # jinja2's errors: a broken override or a missing variable
        raise RenderError(f"template {template} failed: {exc}") from exc


def build_site(editions: Sequence[ArchivedEdition], settings: SiteSettings,
               ctx: RenderContext) -> dict[str, bytes]:
    """Every file of the site, by path relative to its root (pure; same input, same bytes).

    ``ctx`` is the mail's render context (catalog, templates, zone); its date, images and
    mirror slots are replaced per edition, so nothing per recipient can reach a page."""
    env = ctx.env
    ordered = sorted(editions, key=lambda e: (e.sent_at, e.edition.id), reverse=True)
    files: dict[str, bytes] = {}
    languages: list[dict[str, object]] = []
    for language in settings.languages:
        catalog = catalog_for(language, override_dir=ctx.override_dir, strict=ctx.strict)
        pages: list[_Page] = []
        for item in ordered:
            page_ctx = dataclasses.replace(ctx, date=item.sent_at, images=item.images, mirror_slots=0,
                                           onions=(), archive_links={})
            web, images = _relative_images(web_edition(item.edition, language, page_ctx), "../")
            files.update(images)
            body = _render(env, "archive/_posts.html", {"web": web, "_": web.translate,
                                                        "mirror_label": web.mirror_label})
            pages.append(_Page(
                id=item.edition.id, file=f"{item.edition.id}.html", web=web,
                updated=_atom_time(item.sent_at),
                atom_id=_feed_id(settings.public_url, language, item.edition.id),
                content=Markup(body),  # noqa: S704  (rendered by our autoescaping environment)
            ))
        name = ctx.newsletter.name.get(language) or next(iter(ctx.newsletter.name.values()), "")
        common = {
            "_": _translator(catalog), "lang": language, "name": name, "hosts": settings.hosts,
            "subscribe_mailto": settings.subscribe_mailto, "marker": Markup(ARCHIVE_MARKER.decode()),  # noqa: S704
            "root": "../", "language": language,
        }
        for page in pages:
            path = f"{language}/{page.file}"
            document = _render(env, "archive/edition.html", {**common, "page": page, "web": page.web,
                                                             "mirror_label": page.web.mirror_label})
            _check(path, document)
            files[path] = document.encode("utf-8")
        index = _render(env, "archive/index.html", {**common, "pages": pages})
        _check(f"{language}/index.html", index)
        files[f"{language}/index.html"] = index.encode("utf-8")
        feed = _render(env, "archive/feed.atom.xml", {
            **common, "pages": pages, "feed_id": _feed_id(settings.public_url, language),
            "updated": pages[0].updated if pages else "1970-01-01T00:00:00Z",
        })
        files[f"{language}/feed.atom"] = feed.encode("utf-8")
        languages.append({"lang": language, "name": name, "label": catalog.gettext("Past editions"),
                          "count": len(pages)})
    default = settings.languages[0]
    first = catalog_for(default, override_dir=ctx.override_dir, strict=ctx.strict)
    root = _render(env, "archive/root.html", {
        "_": _translator(first),
        "lang": default, "name": ctx.newsletter.name.get(default, ""), "languages": languages,
        "hosts": settings.hosts, "subscribe_mailto": settings.subscribe_mailto,
        "marker": Markup(ARCHIVE_MARKER.decode()), "root": "",  # noqa: S704
    })
    _check("index.html", root)
    files["index.html"] = root.encode("utf-8")
    return dict(sorted(files.items()))
