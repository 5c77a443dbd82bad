"""The public endpoints: subscribe, confirm, unsubscribe (Starlette).

* ``GET /``: the home page: what the newsletter is, the subscribe form, subscribing by mail,
  the other addresses of these pages.
* ``GET/POST /subscribe``: a bilingual form. The answer to a well-formed address is the same
  whether or not it is on the list, and so is the work done before it: the form only records
  the request (``SignupDesk.request``); the worker in the background decides it, within the
  limits on confirmation mails, and sends the mail (``ConfirmationQueue``), so a deferral or a
  restart loses none. The POST needs no cookie and no CSRF token, so the organisation's own
  blog can carry a plain form that posts here (docs/web.md, "Embedding the form"): double
  opt-in already makes a forged subscription harmless (nothing is sent to the reader until
  the mailed link is followed), and the rate limit and the one answer still hold.
* ``GET /confirm/TOKEN``: a page with a button; ``POST`` to the same address confirms (double
  opt-in; link scanners only GET). Confirming twice is harmless.
* ``GET /language/TOKEN``: a button; ``POST`` changes an active reader's language to the one
  in the token, which was mailed to them (a form post alone never changes a reader).
* ``GET /u/TOKEN``: a bilingual page with a button and a language switch.
* ``POST /u/TOKEN``: RFC 8058 one-click. Idempotent, no cookie, no login, 200 even when already
  unsubscribed: mail providers post here with nothing but ``List-Unsubscribe=One-Click``.

Every response carries security headers and a CSP that allows only this server. Every other
form (confirm, change of language, unsubscribe) acts only on a POST that is not cross-site
(``is_cross_site``: a browser says so in ``Sec-Fetch-Site`` or ``Origin``); a mail provider's
RFC 8058 one-click POST comes from its servers, with neither header, and still works. POSTs are
rate limited per client.
Logs name subscribers by id and never print a token or an address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from subscribers.catalog import page_strings
from subscribers.confirmations import ConfirmationSender
from subscribers.errors import InputError
from subscribers.forwarded import client_address
from subscribers.languages import KNOWN_LANGUAGES
from subscribers.lifecycle import Subscriber, SubscriberState
from subscribers.settings import PageSettings
from subscribers.signup import SignupDesk
from subscribers.store import InConfirmation, SubscriberStore
from subscribers.tokens import BadToken, ConfirmToken, LanguageToken, TokenSigner

__all__ = ["RateLimiter", "SecurityHeaders", "is_cross_site", "make_web_app", "page_languages"]

log = logging.getLogger("newsletter.web")

_PAGE_LANGS = KNOWN_LANGUAGES  # every known language has page text in the catalog


class RateLimiter:
    """A token bucket per client: ``per_minute`` requests, refilled continuously.

    Bounded memory: the least recently seen clients are dropped beyond ``max_clients``.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 50_000) -> None:
        self.capacity = float(max(per_minute, 1))
        self.rate = self.capacity / 60.0
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return ok


PAGES_CSP = (b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
             b"frame-ancestors 'none'; base-uri 'none'")


class SecurityHeaders:
    """ASGI middleware: strict CSP (nothing from outside this server), no referrer (the URL
    holds a token), no framing, no caching of personal pages. A response that sets one of
    these headers itself keeps its own (the admin's preview frames). ``csp``: the admin's."""

    def __init__(self, app: ASGIApp, https: bool, csp: bytes = PAGES_CSP) -> None:
        self.app = app
        headers = {
            b"content-security-policy": csp,
            b"x-content-type-options": b"nosniff",
            b"x-frame-options": b"DENY",
            b"referrer-policy": b"no-referrer",
            b"cache-control": b"no-store",
            b"cross-origin-opener-policy": b"same-origin",
            b"cross-origin-resource-policy": b"same-origin",
            b"permissions-policy": b"camera=(), microphone=(), geolocation=(), interest-cohort=()",
        }
        if https:
            headers[b"strict-transport-security"] = b"max-age=31536000"
        self.headers = list(headers.items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = {k.lower() for k, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (k, v) for k, v in self.headers if k not in existing]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def page_languages(choice: str | None, accept_language: str = "") -> tuple[str, ...]:
    """The languages a page shows: the reader's, then English (or Simplified for English).

    Pure: ``choice`` may be a bilingual pair; otherwise guess from ``Accept-Language``.
    """
    primary = None
    if choice:
        first = choice.split("+", 1)[0]
        if first in _PAGE_LANGS:
            primary = first
    if primary is None:
        for part in accept_language.split(","):
            tag = part.split(";", 1)[0].strip().lower()
            if tag.startswith(("zh-hant", "zh-tw", "zh-hk", "zh-mo")):
                primary = "zh-Hant"
            elif tag.startswith("zh"):
                primary = "zh-Hans"
            elif tag.startswith("en"):
                primary = "en"
            if primary:
                break
    primary = primary or "zh-Hans"
    return (primary, "en") if primary != "en" else ("en", "zh-Hans")


def is_cross_site(headers: Mapping[str, str], own_origins: frozenset[str]) -> bool:
    """Whether a browser made this request from another site's page (pure).

    ``Sec-Fetch-Site`` is what current browsers send; ``Origin`` is the older signal. Our own
    pages send ``Origin: null`` (their Referrer-Policy is no-referrer), and a server (a mail
    provider's one-click unsubscribe) sends neither, so neither counts as cross-site."""
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site in ("cross-site", "same-site"):
        return True
    origin = headers.get("origin", "").strip().lower().rstrip("/")
    return bool(origin) and origin != "null" and origin not in own_origins


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@dataclass(frozen=True)
class _Ctx:
    store: SubscriberStore
    tokens: TokenSigner
    env: Environment
    settings: PageSettings
    strings: Mapping[str, Any]
    limiter: RateLimiter
    base_path: str
    secure_cookie: bool
    own_origins: frozenset[str]


def _load_strings(env: Environment) -> dict[str, Any]:
    """The pages' text from the one message catalog, read through the Jinja loader."""
    loader = env.loader
    assert loader is not None
    return dict(page_strings(lambda path: loader.get_source(env, path)[0].encode("utf-8")))


def make_web_app(store: SubscriberStore, tokens: TokenSigner, env: Environment,
                 settings: PageSettings, *, signup: SignupDesk,
                 confirmations: ConfirmationSender | None = None,
                 background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
                 on_confirmed: Callable[[int], Coroutine[Any, Any, object]] | None = None,
                 in_confirmation: InConfirmation | None = None,
                 ) -> Starlette:
    """Build the ASGI app. ``env`` is the project's one strict Jinja environment. The form
    hands requests to ``signup``; with ``confirmations``, its worker decides them and sends
    the mails for as long as the app runs (its lifespan), as do the ``background`` tasks
    (the caller's timers, such as following a key rotation). ``in_confirmation`` runs in the
    transaction that confirms a reader (the welcome's outbox row commits with it);
    ``on_confirmed`` is called afterwards with the reader (the welcome: the latest edition at
    once, delivered), once per reader."""
    parts = urlsplit(settings.public_url)
    ctx = _Ctx(
        store=store, tokens=tokens, env=env, settings=settings, strings=_load_strings(env),
        limiter=RateLimiter(settings.rate_limit), base_path=parts.path.rstrip("/"),
        secure_cookie=parts.scheme == "https",
        own_origins=frozenset(_origin(u) for u in (settings.public_url, *settings.mirrors)),
    )

    proxies = settings.trusted_proxies

    def client(request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        if not proxies:
            return peer
        return client_address(peer, request.headers.items(), proxies, settings.proxy_header)

    def render(name: str, langs: tuple[str, ...], status: int = 200,
               **extra: Any) -> HTMLResponse:
        blocks = [{"lang": lang, "t": ctx.strings[lang]} for lang in langs]
        names = ctx.strings["language_names"]
        switch = [(code, names.get(code, code)) for code in _PAGE_LANGS]
        site = settings.names.get(langs[0]) or settings.names.get("en") or ""
        html = ctx.env.get_template(f"web/{name}").render(
            blocks=blocks, base_path=ctx.base_path, site_name=site, switch=switch,
            page_lang=langs[0], title_key=extra.pop("title_key", "subscribe_title"),
            contact=settings.contact if extra.pop("show_contact", False) else None, **extra)
        return HTMLResponse(html, status_code=status)

    def message(langs: tuple[str, ...], title: str, body: str, status: int = 200,
                link: str = "", link_key: str = "resubscribe",
                show_contact: bool = False) -> HTMLResponse:
        return render("message.html", langs, status, title_key=title, body_key=body, link=link,
                      link_key=link_key, show_contact=show_contact)

    def cross_site(request: Request) -> bool:
        """A form on another site's page posted here: only the subscribe form may act on it."""
        return is_cross_site(request.headers, ctx.own_origins)

    def limited(request: Request, langs: tuple[str, ...]) -> HTMLResponse | None:
        if ctx.limiter.allow(client(request)):
            return None
        resp = message(langs, "too_many_title", "too_many_body", 429)
        resp.headers["retry-after"] = "60"
        return resp

    def chosen_langs(request: Request, fallback: str | None = None) -> tuple[str, ...]:
        lang = request.query_params.get("lang")
        return page_languages(lang if lang in _PAGE_LANGS else fallback,
                              request.headers.get("accept-language", ""))

    def reader_langs(request: Request, record: Subscriber | None,
                     langs: tuple[str, ...]) -> tuple[str, ...]:
        """The subscriber's own languages, unless the page was asked for others (``?lang=``)."""
        if record is None or "lang" in request.query_params:
            return langs
        return page_languages(record.language)

    def subscribe_form(request: Request, langs: tuple[str, ...], *, status: int = 200,
                       error: str = "", selected: str | None = None,
                       page: str = "subscribe.html") -> HTMLResponse:
        names = ctx.strings["language_names"]
        choices = [(c, names.get(c, c)) for c in store.settings.choices]
        return render(page, langs, status, choices=choices, selected=selected or langs[0],
                      error=error, mail_address=settings.mail_address,
                      mirrors=settings.mirrors, contact_address=settings.contact,
                      title_key="home_title" if page == "home.html" else "subscribe_title")

    async def home(request: Request) -> Response:
        return subscribe_form(request, chosen_langs(request), page="home.html")

    async def subscribe_get(request: Request) -> Response:
        return subscribe_form(request, chosen_langs(request))

    async def subscribe_post(request: Request) -> Response:
        langs = chosen_langs(request)
        if (resp := limited(request, langs)) is not None:
            return resp
        form = await request.form()
        language = str(form.get("language") or "")
        if language in store.settings.choices:
            langs = page_languages(language)
        # No CSRF check: a form on another site (the organisation's blog) may post here. A
        # forged request only records a pending row and, within the limits, one confirmation
        # mail; nothing else happens until the mailed link is followed (double opt-in).
        address = str(form.get("email") or "")[:320]
        try:
            # The same work for every address: decided later, by the worker (signup.py).
            await run_in_threadpool(signup.request, address, language or None)
        except InputError:
            return subscribe_form(request, langs, status=400, error="invalid_email",
                                  selected=language or None)
        if confirmations is not None:
            confirmations.wake()
        # The same page whatever the list holds: new, pending, active or re-subscribing.
        return message(langs, "check_title", "check_body")

    welcomes: set[asyncio.Task[object]] = set()  # held, so a running welcome is not collected

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        runs: list[asyncio.Task[Any]] = [asyncio.create_task(task()) for task in background]
        if confirmations is not None:
            runs.append(asyncio.create_task(confirmations.run()))
        try:
            yield
        finally:
            runs.extend(welcomes)
            for run in runs:
                run.cancel()
            for run in runs:
                with contextlib.suppress(asyncio.CancelledError):
                    await run

    def confirm_bad(langs: tuple[str, ...]) -> HTMLResponse:
        return message(langs, "confirm_bad_title", "confirm_bad_body", 400,
                       link=f"{ctx.base_path}/subscribe")

    def confirm_token(request: Request) -> tuple[tuple[str, ...], ConfirmToken] | Response:
        """Both confirm handlers start here: the rate limit, then the token (or an error page)."""
        langs = chosen_langs(request)
        if (resp := limited(request, langs)) is not None:
            return resp
        try:
            return langs, tokens.verify_confirm(request.path_params["token"])
        except BadToken:
            return confirm_bad(langs)

    async def confirm_get(request: Request) -> Response:
        """Show a button, confirm nothing. Mail providers' link scanners (QQ's among them) open
        every link in a new message: a GET that confirmed would opt in any address someone
        typed into the form, which is what double opt-in exists to prevent."""
        checked = confirm_token(request)
        if isinstance(checked, Response):
            return checked
        langs, tok = checked
        record = await run_in_threadpool(store.get, tok.subscriber_id)
        langs = reader_langs(request, record, langs)
        if record is not None and record.state is SubscriberState.ACTIVE:
            return message(langs, "confirmed_title", "confirmed_body")  # harmless repeat
        if record is None or record.state is not SubscriberState.PENDING:
            return confirm_bad(langs)
        return render("confirm.html", langs, title_key="confirm_title", body_key="confirm_body",
                      action=f"{ctx.base_path}/confirm/{request.path_params['token']}")

    async def confirm_post(request: Request) -> Response:
        """Confirm. The token is the proof (as for one-click unsubscribe), so no cookie or
        CSRF token is needed; confirming twice is harmless."""
        if cross_site(request):
            return await refused(confirm_get, request)
        checked = confirm_token(request)
        if isinstance(checked, Response):
            return checked
        langs, tok = checked
        before = await run_in_threadpool(store.get, tok.subscriber_id)
        state = await run_in_threadpool(lambda: store.confirm(tok.subscriber_id, tok.issued_at,
                                                              then=in_confirmation))
        record = await run_in_threadpool(store.get, tok.subscriber_id)
        langs = reader_langs(request, record, langs)
        if state is SubscriberState.ACTIVE:
            if on_confirmed is not None and (before is None or before.state is not state):
                welcomes.add(task := asyncio.create_task(on_confirmed(tok.subscriber_id)))
                task.add_done_callback(welcomes.discard)
            return message(langs, "confirmed_title", "confirmed_body")
        return confirm_bad(langs)

    def language_token(request: Request) -> tuple[tuple[str, ...], LanguageToken] | Response:
        langs = chosen_langs(request)
        if (resp := limited(request, langs)) is not None:
            return resp
        try:
            tok = tokens.verify_language(request.path_params["token"])
        except BadToken:
            return confirm_bad(langs)
        if tok.language not in store.settings.choices:
            return confirm_bad(langs)
        return langs, tok

    async def language_request(request: Request) -> tuple[tuple[str, ...], LanguageToken,
                                                          Subscriber] | Response:
        """The link's token, checked, and the reader it still speaks for (GET and POST alike)."""
        checked = language_token(request)
        if isinstance(checked, Response):
            return checked
        langs, tok = checked
        record = await run_in_threadpool(store.get, tok.subscriber_id)
        if record is None or not language_current(record, tok):
            return confirm_bad(langs)
        return langs, tok, record

    def language_current(record: Subscriber | None, tok: LanguageToken) -> bool:
        """The link still speaks for the reader: active, and issued since they last changed
        state (a link from before an unsubscribe and a re-subscription is spent)."""
        if record is None or record.state is not SubscriberState.ACTIVE:
            return False
        return tok.issued_at.replace(microsecond=0) >= \
            record.state_changed_at.replace(microsecond=0)

    async def language_get(request: Request) -> Response:
        """A button only, like ``confirm_get``: link scanners must change nothing."""
        checked = await language_request(request)
        if isinstance(checked, Response):
            return checked
        langs, _tok, record = checked
        langs = reader_langs(request, record, langs)
        return render("confirm.html", langs, title_key="language_title",
                      body_key="language_body",
                      action=f"{ctx.base_path}/language/{request.path_params['token']}")

    async def language_post(request: Request) -> Response:
        if cross_site(request):
            return await refused(language_get, request)
        checked = await language_request(request)
        if isinstance(checked, Response):
            return checked
        langs, tok, _record = checked
        await run_in_threadpool(store.set_language, tok.subscriber_id, tok.language)
        log.info("subscriber %d changed language (confirmed)", tok.subscriber_id)
        langs = reader_langs(request, await run_in_threadpool(store.get, tok.subscriber_id),
                             langs)
        return message(langs, "language_done_title", "language_done_body")

    def verify_unsub(request: Request) -> int | None:
        try:
            return tokens.verify_unsubscribe(request.path_params["token"])
        except BadToken:
            return None

    async def unsubscribe_get(request: Request) -> Response:
        langs = chosen_langs(request)
        sid = verify_unsub(request)
        if sid is None:
            return message(langs, "bad_link_title", "bad_link_body", 404, show_contact=True)
        record = await run_in_threadpool(store.get, sid)
        langs = reader_langs(request, record, langs)
        already = record is None or record.state not in (SubscriberState.ACTIVE,
                                                         SubscriberState.PENDING)
        return render("unsubscribe.html", langs, title_key="unsub_title", already=already,
                      action=f"{ctx.base_path}/u/{request.path_params['token']}")

    async def unsubscribe_post(request: Request) -> Response:
        if cross_site(request):
            return await refused(unsubscribe_get, request)
        langs = chosen_langs(request)
        sid = verify_unsub(request)
        if sid is None:
            return message(langs, "bad_link_title", "bad_link_body", 404, show_contact=True)
        # No rate limit here: a valid token is proof enough, and a provider's one-click POST
        # must never be refused. Idempotent: already unsubscribed (or gone) is still 200.
        await run_in_threadpool(store.unsubscribe, sid)
        if "lang" not in request.query_params:
            record = await run_in_threadpool(store.get, sid)
            if record is not None:
                langs = page_languages(record.language)
        return message(langs, "unsub_done_title", "unsub_done_body",
                       link=f"{ctx.base_path}/subscribe?lang={langs[0]}")

    async def refused(page: Callable[[Request], Any], request: Request) -> Response:
        """A cross-site POST changes nothing: the page with its button, to press here."""
        log.info("refused a cross-site POST to /%s", request.url.path.split("/", 2)[1])
        resp: Response = await page(request)
        if resp.status_code == 200:
            resp.status_code = 403
        return resp

    async def site_css(request: Request) -> Response:
        assert ctx.env.loader is not None
        css, _, _ = ctx.env.loader.get_source(ctx.env, "web/site.css")
        return Response(css, media_type="text/css",
                        headers={"cache-control": "public, max-age=86400"})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/", home, methods=["GET"]),
        Route("/subscribe", subscribe_get, methods=["GET"]),
        Route("/subscribe", subscribe_post, methods=["POST"]),
        Route("/confirm/{token}", confirm_get, methods=["GET"]),
        Route("/confirm/{token}", confirm_post, methods=["POST"]),
        Route("/language/{token}", language_get, methods=["GET"]),
        Route("/language/{token}", language_post, methods=["POST"]),
        Route("/u/{token}", unsubscribe_get, methods=["GET"]),
        Route("/u/{token}", unsubscribe_post, methods=["POST"]),
        Route("/site.css", site_css, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders, https=ctx.secure_cookie)
    return app
