"""The web archive's path: load the sent editions → build the site → write it → rclone it out.

``newsletter archive build|publish`` and the daemon (after each edition is sent, and its
mirrors job retrying a failed target) all come here. The mail's "read this issue on …" links
come from :func:`archive_links`, for the healthy archive hosts the mirror registry knows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from mailer.app import App
from mailer.archive.publish import TargetResult, WriteReport, publish, write_site
from mailer.archive.site import ArchivedEdition, SiteSettings, build_site, page_links
from mailer.archive.state import load_states, record_results
from mailer.config import ImageSettings
from mailer.errors import InputError, NewsletterError
from mailer.mirrors.health import ARCHIVE_MARKER
from mailer.models import Edition, EditionState, InlineImage
from mailer.render.images import fetch_images, image_urls
from mailer.render.variant import RenderContext

__all__ = [
    "ArchiveRun",
    "BuildReport",
    "archive_after_send",
    "archive_links",
    "build_archive",
    "publish_archive",
    "retry_failed_targets",
    "sent_editions",
]

log = logging.getLogger("newsletter.archive")


@dataclass(frozen=True)
class BuildReport:
    folder: Path
    editions: int
    languages: tuple[str, ...]
    write: WriteReport


def _cache_folder(folder: Path) -> Path:
    # Beside the site, never in it: nothing here is published.
    return folder.with_name(folder.name + ".cache")


def _cached_images(cache: Path, edition: Edition, settings: ImageSettings,
                   client: httpx.AsyncClient | None) -> dict[str, InlineImage]:
    """An edition's images, fetched once: a sent edition's posts rarely change, and every build
    (after each send) must not download every image of every past edition again. The cache
    holds what was fetched for exactly these image URLs; another set of URLs fetches afresh."""
    urls = image_urls(edition.posts)
    path = cache / f"edition-{edition.id}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("urls") == urls:
            return {url: InlineImage(cid=i["cid"], content_type=i["content_type"],
                                     data=base64.b64decode(i["data"]), filename=i["filename"])
                    for url, i in data["images"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    images = fetch_images(edition.posts, settings, client=client)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}")  # two builds at once: whole files only
    tmp.write_text(json.dumps({"urls": urls, "images": {
        url: {"cid": i.cid, "content_type": i.content_type, "filename": i.filename,
              "data": base64.b64encode(i.data).decode("ascii")} for url, i in images.items()}}),
        encoding="utf-8")
    tmp.replace(path)
    return images


def sent_editions(app: App, images_client: httpx.AsyncClient | None = None,
                  cache: Path | None = None) -> list[ArchivedEdition]:
    """Every sent edition with the time it went out and its images (fetched as for the mail,
    once per edition when ``cache`` names a folder)."""
    out = []
    for info in app.editions.find([EditionState.SENT]):
        edition = app.editions.load(info.id)
        if not edition.posts:
            continue
        images: dict[str, InlineImage] = {}
        if app.config.images.fetch:
            images = (_cached_images(cache, edition, app.config.images, images_client) if cache
                      else fetch_images(edition.posts, app.config.images, client=images_client))
        out.append(ArchivedEdition(edition, info.started_at or info.finished_at or info.created_at, images))
    return out


# One build writes the folder at a time: the daemon can finish two editions at once.
_WRITING = threading.Lock()


def _check_folder(folder: Path) -> None:
    """A build makes the folder hold exactly the site, deleting anything else: refuse a folder
    that has files but no archive of ours (``--out /srv/www`` by mistake)."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    root = folder / "index.html"
    if not (root.is_file() and ARCHIVE_MARKER in root.read_bytes()):
        raise InputError(f"{folder} is not empty and holds no archive built here: "
                         "choose an empty folder (a build deletes what is not the archive's)")


def build_archive(app: App, out: Path | None = None,
                  images_client: httpx.AsyncClient | None = None) -> BuildReport:
    """``newsletter archive build``: the site of every sent edition, written to ``out``
    (default ``[archive] folder``); only files whose bytes changed are rewritten."""
    config = app.config
    folder = out or config.archive.folder
    editions = sent_editions(app, images_client, _cache_folder(folder))
    ctx = RenderContext.from_config(config, date=app.clock(), env=app.jinja, onions=())
    settings = SiteSettings(languages=config.newsletter.languages, hosts=config.archive.hosts,
                            subscribe_mailto=config.archive.subscribe_mailto,
                            public_url=config.newsletter.public_url)
    files = build_site(editions, settings, ctx)
    _check_folder(folder)
    with _WRITING:
        report = write_site(files, folder)
    log.info("archive: %d edition(s) in %d language(s) at %s: %d file(s) written, %d removed",
             len(editions), len(settings.languages), folder, len(report.written), len(report.removed))
    return BuildReport(folder, len(editions), settings.languages, report)


def publish_archive(app: App, *, only_failed: bool = False) -> list[TargetResult]:
    """``newsletter archive publish``: rclone the built folder to every target (or only those
    whose last sync failed) and record each outcome, so a failed one is retried next run."""
    settings = app.config.archive
    targets = settings.targets
    if only_failed:
        states = load_states(app.engine)
        targets = tuple(t for t in targets if t.remote in states and not states[t.remote].ok)
    if not targets:
        return []
    with _WRITING:  # never sync a folder half-written
        results = publish(settings, settings.folder, targets)
    record_results(app.engine, results, app.clock())
    for r in results:
        if r.ok:
            log.info("archive: %s synced", r.remote)
        else:
            log.error("archive: %s failed (retried on the next run): %s", r.remote, r.detail)
    return results


@dataclass(frozen=True)
class ArchiveRun:
    build: BuildReport | None
    results: Sequence[TargetResult]
    error: str | None = None


async def archive_after_send(app: App) -> ArchiveRun:
    """The daemon's step after an edition is sent: build, then publish to every target.

    An archive problem never fails the send that came before it: it is logged and returned."""
    if not app.config.archive.targets:
        return ArchiveRun(None, ())
    try:
        built = await asyncio.to_thread(build_archive, app)
        results = await asyncio.to_thread(publish_archive, app)
    except NewsletterError as exc:
        log.error("archive: not published: %s", exc)
        return ArchiveRun(None, (), str(exc))
    return ArchiveRun(built, results)


async def retry_failed_targets(app: App) -> list[TargetResult]:
    """The mirrors job's step: sync again each target whose last sync failed (the site is
    already built)."""
    if not app.config.archive.targets or not (app.config.archive.folder / "index.html").is_file():
        return []
    try:
        return await asyncio.to_thread(publish_archive, app, only_failed=True)
    except NewsletterError as exc:
        log.error("archive: retry failed: %s", exc)
        return []


def archive_links(app: App, edition_id: int,
                  languages: Sequence[str]) -> Mapping[str, tuple[tuple[str, str], ...]]:
    """Per language choice, ``(host, url)`` of this edition's page on each archive host that the
    registry counts healthy and unblocked ("read this issue on …"); none for a preview (id 0)."""
    if edition_id <= 0 or not app.config.archive.hosts:
        return {}
    hosts = [site.url for site in app.mirrors.static_links(kind="archive")]
    return {choice: page_links(hosts, choice, edition_id) for choice in languages} if hosts else {}
