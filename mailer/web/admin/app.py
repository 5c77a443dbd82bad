"""The admin's pages (Starlette). Every action calls the ``EditionStore`` or ``mailer.pipeline``
function the CLI calls; this module only checks who asks, reads forms and renders pages.

Safety, in the order a request meets it:

* every response carries a strict CSP (nothing but this server; no script at all), no framing
  except the previews' own frames, no referrer, no caching;
* a session is a cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) naming a row in the
  database; idle or old sessions are over, and "log out everywhere" ends them all;
* every POST carries the session's CSRF token (the login form a cookie-bound one);
* pages check the role (operators alone reach the mirrors page) and, with
  ``[admin] require_totp``, an account without a second factor reaches only its enrolment;
* every action is written to the audit log with who, what and when.

A preview is the HTML part of the very message a sample reader gets (the one prepare and
personalise path), with its ``cid:`` images as ``data:`` URIs, served with ``CSP: sandbox`` into
a sandboxed frame: a hostile feed's markup can neither run nor reach the admin's origin.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from mailer.app import App
from mailer.delivery.report import edition_report
from mailer.editions.store import EDITABLE
from mailer.errors import NewsletterError
from mailer.localtime import parse_local_time
from mailer.mirrors.configedit import Status, set_site_status
from mailer.mirrors.exposure import exposure_for, exposure_of_edition
from mailer.mirrors.state import load_health
from mailer.models import EditionState, OutboxState
from mailer.web.admin import accounts_for
from mailer.web.admin.accounts import AccountStore, LoginResult, Role, Session, qr_svg, totp_uri
from mailer.web.admin.chart import COLOURS, stacked_bars
from mailer.web.admin.text import N_, load_admin_text
from subscribers.catalog import BABEL_LOCALES, ENDONYMS
from subscribers.languages import KNOWN_LANGUAGES
from subscribers.lifecycle import SubscriberState
from subscribers.web import SecurityHeaders

__all__ = ["ADMIN_CSP", "PREVIEW_CSP", "build_admin_app"]

log = logging.getLogger("newsletter.admin")

SESSION_COOKIE = "nl_admin"
LOGIN_COOKIE = "nl_admin_login"
LANG_COOKIE = "nl_admin_lang"

ADMIN_CSP = (b"default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
             b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# The preview frame: its own opaque origin (sandbox without allow-scripts or allow-same-origin),
# inline styles as in the mail, images only from the message itself.
PREVIEW_CSP = ("sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
               "frame-ancestors 'self'; base-uri 'none'; form-action 'none'")

S = EditionState
# Content-changing actions: with [admin] four_eyes, whoever did one of these may not approve.
AUTHORING = ("create", "edit", "schedule")
EDITION_ACTIONS = {
    "approve": N_("Approve"),
    "hold": N_("Hold"),
    "pause": N_("Pause"),
    "resume": N_("Resume"),
    "cancel": N_("Cancel"),
}

Handler = Callable[[Request, Session], Awaitable[Response]]
_STATUSES: dict[str, Status] = {"active": "active", "reserve": "reserve", "retired": "retired"}


class _Refused(Exception):
    """An action the rules refuse, shown to the editor on the page it came from."""


def build_admin_app(app: App) -> Starlette:
    """The admin's routes over ``app``'s stores and pipeline."""
    cfg = app.config
    env = app.jinja
    accounts: AccountStore = accounts_for(app)
    text = load_admin_text(env)
    tz = cfg.schedule.timezone

    # ------------------------------------------------------------------ helpers

    def page_language(request: Request) -> str:
        chosen = request.cookies.get(LANG_COOKIE, "")
        if chosen in KNOWN_LANGUAGES:
            return chosen
        for part in request.headers.get("accept-language", "").split(","):
            tag = part.split(";", 1)[0].strip().lower()
            if tag.startswith(("zh-hant", "zh-tw", "zh-hk", "zh-mo")):
                return "zh-Hant"
            if tag.startswith("zh"):
                return "zh-Hans"
            if tag.startswith("en"):
                return "en"
        return "en"

    def https(request: Request) -> bool:
        return request.url.scheme == "https"

    def when(at: datetime | None, lang: str) -> str:
        """The weekday, date and time in the configured zone, and UTC."""
        if at is None:
            return "-"
        local = format_datetime(at, "EEEE yyyy-MM-dd HH:mm", tzinfo=ZoneInfo(tz),
                                locale=BABEL_LOCALES.get(lang, "en"))
        return f"{local} {tz} ({at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"

    def render(request: Request, name: str, session: Session | None, *, status: int = 200,
               **values: Any) -> HTMLResponse:
        lang = page_language(request)
        html = env.get_template(f"admin/{name}").render(
            t=text.for_language(lang), lang=lang, user=session.user if session else None,
            csrf=session.csrf if session else "", when=lambda at: when(at, lang),
            languages=[(code, ENDONYMS[code]) for code in KNOWN_LANGUAGES],
            require_totp=cfg.admin.require_totp, **values)
        resp = HTMLResponse(html, status_code=status)
        if https(request):
            resp.headers["strict-transport-security"] = "max-age=31536000"
        return resp

    def message(request: Request, session: Session | None, title: str, body: str,
                status: int) -> HTMLResponse:
        return render(request, "message.html", session, status=status, title=title, body=body)

    def audit(session: Session, action: str, target: str | None = None,
              detail: str | None = None) -> None:
        accounts.audit(session.user.name, action, target, detail)
        log.info("admin %s: %s %s", session.user.name, action, target or "")

    def client(request: Request) -> str:
        # uvicorn has already put a trusted proxy's X-Forwarded-For here ([admin] trusted_proxies)
        return request.client.host if request.client else "unknown"

    async def form_of(request: Request, session: Session) -> FormData | None:
        """The posted form if its CSRF token is this session's, else None."""
        form = await request.form()
        given = str(form.get("csrf") or "")
        if not given or not hmac.compare_digest(given, session.csrf):
            return None
        return form

    def guarded(handler: Handler, *, role: Role | None = None, enrol: bool = False,
                post: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """The session, the second factor, the role and (for POSTs) CSRF, then ``handler``."""

        async def endpoint(request: Request) -> Response:
            token = request.cookies.get(SESSION_COOKIE, "")
            session = await run_in_threadpool(accounts.session, token)
            if session is None:
                target = "/login?expired=1" if token else "/login"
                resp: Response = RedirectResponse(target, status_code=303)
                if token:
                    resp.delete_cookie(SESSION_COOKIE, path="/")
                return resp
            if cfg.admin.require_totp and not session.user.has_totp and not enrol:
                return RedirectResponse("/account", status_code=303)
            if role is Role.OPERATOR and session.user.role is not Role.OPERATOR:
                t = text.for_language(page_language(request))
                return message(request, session, t(N_("Not allowed")),
                               t(N_("This page is for operators.")), 403)
            if post:
                form = await form_of(request, session)
                if form is None:
                    t = text.for_language(page_language(request))
                    return message(request, session, t(N_("This form has expired")),
                                   t(N_("Go back, reload the page and try again.")), 403)
                request.state.form = form
            try:
                return await handler(request, session)
            except (_Refused, NewsletterError) as exc:
                t = text.for_language(page_language(request))
                return message(request, session, t(N_("Refused")), str(exc), 409)

        return endpoint

    def edition_id(request: Request) -> int:
        return int(request.path_params["edition_id"])

    # ------------------------------------------------------------------ login

    def login_page(request: Request, *, status: int = 200, error: str = "") -> Response:
        nonce = secrets.token_urlsafe(24)
        t = text.for_language(page_language(request))
        notice = t(N_("Your session ended. Please log in again.")) \
            if request.query_params.get("expired") else ""
        resp = render(request, "login.html", None, status=status, login_csrf=nonce,
                      error=error, notice=notice)
        resp.set_cookie(LOGIN_COOKIE, nonce, max_age=1800, httponly=True, samesite="strict",
                        secure=https(request), path="/login")
        return resp

    async def login_get(request: Request) -> Response:
        return login_page(request)

    async def login_post(request: Request) -> Response:
        t = text.for_language(page_language(request))
        form = await request.form()
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        given = str(form.get("csrf") or "")
        if not nonce or not hmac.compare_digest(given, nonce):
            return login_page(request, status=403,
                              error=t(N_("This form has expired. Please try again.")))
        name = str(form.get("name") or "")[:64]
        password = str(form.get("password") or "")[:1024]
        code = str(form.get("code") or "")[:16]
        result, token = await run_in_threadpool(accounts.login, name, password, code,
                                                client(request))
        if result is LoginResult.LIMITED:
            resp = login_page(request, status=429, error=t(N_(
                "Too many failed logins. Wait a few minutes and try again.")))
            resp.headers["retry-after"] = str(int(cfg.admin.login_window.total_seconds()))
            return resp
        if result is LoginResult.REFUSED or token is None:
            return login_page(request, status=401,
                              error=t(N_("Wrong name, password or code.")))
        accounts.audit(name, "login")
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        secure=https(request), path="/")
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        return resp

    async def logout(request: Request, session: Session) -> Response:
        accounts.end_session(request.cookies.get(SESSION_COOKIE, ""))
        audit(session, "logout")
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def logout_everywhere(request: Request, session: Session) -> Response:
        n = accounts.end_all_sessions(session.user)
        audit(session, "logout-everywhere", detail=f"{n} session(s)")
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def set_language(request: Request) -> Response:
        code = request.path_params["code"]
        resp = RedirectResponse("/", status_code=303)
        if code in KNOWN_LANGUAGES:
            resp.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, httponly=True,
                            samesite="strict", secure=https(request), path="/")
        return resp

    # ------------------------------------------------------------------ account

    async def account(request: Request, session: Session, *, error: str = "") -> Response:
        qr = uri = secret = ""
        if not session.user.has_totp:
            secret = await run_in_threadpool(accounts.totp_pending, session.user)
            uri = totp_uri(secret, session.user.name, cfg.newsletter.name.get("en")
                           or next(iter(cfg.newsletter.name.values()), "newsletter"))
            qr = qr_svg(uri)
        return render(request, "account.html", session, qr=qr, secret=secret, error=error)

    async def account_totp(request: Request, session: Session) -> Response:
        code = str(request.state.form.get("code") or "")
        if not await run_in_threadpool(accounts.totp_enable, session.user, code):
            t = text.for_language(page_language(request))
            return await account(request, session, error=t(N_("That code does not match.")))
        audit(session, "totp-enabled", f"user {session.user.name}")
        return RedirectResponse("/", status_code=303)

    # ------------------------------------------------------------------ dashboard

    async def dashboard(request: Request, session: Session) -> Response:
        now = app.clock()
        upcoming = app.editions.upcoming(now)
        waiting = [i for i in app.editions.find([S.SCHEDULED, S.HELD, S.DRAFT], limit=50)
                   if i.approved_at is None]
        feeds = app.post_store.list_feeds()
        health = load_health(app.engine)
        mirrors = [(s, health.get(s.url)) for s in cfg.mirrors.sites]
        counts = app.subscribers.counts_by_language()
        choices = sorted({lang for _, lang in counts} | set(cfg.newsletter.choices))
        states = [s for s in SubscriberState if any(k[0] is s for k in counts)]
        return render(request, "dashboard.html", session, upcoming=upcoming[:5],
                      waiting=waiting, feeds=feeds, mirrors=mirrors, counts=counts,
                      choices=choices, states=states,
                      require_approval=cfg.newsletter.require_approval,
                      four_eyes=cfg.admin.four_eyes, sending=app.editions.find([S.SENDING]))

    # ------------------------------------------------------------------ editions

    async def editions_list(request: Request, session: Session) -> Response:
        known = {s.value for s in S}
        wanted = [S(s) for s in request.query_params.getlist("state") if s in known]
        infos = app.editions.find(wanted or None, limit=200)
        return render(request, "editions.html", session, editions=infos,
                      states=[s.value for s in S], selected={s.value for s in wanted})

    def posts_for_new() -> tuple[list[Any], set[int], dict[int, str]]:
        """Unsent posts first (ticked), then recent posts already in an edition, each marked
        with where it went (``EditionStore.post_uses``, the rule ``create`` applies)."""
        unsent = app.editions.unsent_post_ids()
        recent = [p for p in reversed(app.post_store.list_posts()) if p.id not in set(unsent)][:30]
        posts = app.post_store.load(unsent) + recent
        marks: dict[int, str] = {}
        for use in app.editions.post_uses([p.id for p in recent if p.id is not None]):
            marks[use.post_id] = f"{use.state.value}: {use.edition_id}"
        return posts, set(unsent), marks

    def new_form(request: Request, session: Session, *, status: int = 200,
                 error: str = "") -> Response:
        posts, unsent, marks = posts_for_new()
        return render(request, "edition_new.html", session, status=status, posts=posts,
                      unsent=unsent, marks=marks, config_languages=cfg.newsletter.languages,
                      error=error)

    async def edition_new(request: Request, session: Session) -> Response:
        return new_form(request, session)

    async def edition_create(request: Request, session: Session) -> Response:
        from mailer.editions.store import reuse_problem

        form = request.state.form
        t = text.for_language(page_language(request))
        chosen = [int(v) for v in form.getlist("post") if str(v).isdigit()]
        if not chosen:
            return new_form(request, session, status=400, error=t(N_("Choose at least one post.")))
        confirmed = form.get("confirm_sent") == "yes"
        problem = reuse_problem(app.editions.post_uses(chosen))
        if problem and not confirmed:
            return new_form(request, session, status=400, error=t(N_(
                "Some posts you chose were already in an edition. Tick the confirmation to "
                "send them again.")) + f" ({problem})")
        kind = "per-post" if form.get("kind") == "per-post" else "digest"
        langs = cfg.newsletter.languages
        notes = {lang: str(form.get(f"note_{lang}") or "").strip() for lang in langs}
        subjects = {lang: str(form.get(f"subject_{lang}") or "").strip() for lang in langs}
        eid = app.editions.create(chosen, kind=kind, notes={k: v for k, v in notes.items() if v},
                                  subjects={k: v for k, v in subjects.items() if v},
                                  include_sent=confirmed)
        if eid is None:
            raise _Refused(t(N_("Choose at least one post.")))
        audit(session, "create", f"edition {eid}",
              f"{len(chosen)} post(s)" + (f"; {problem}" if problem else ""))
        return RedirectResponse(f"/editions/{eid}", status_code=303)

    async def edition_show(request: Request, session: Session) -> Response:
        eid = edition_id(request)
        info = app.editions.info(eid)
        edition = app.editions.load(eid)
        history = accounts.audit_log(target=f"edition {eid}", limit=50)
        authors = accounts.authors(f"edition {eid}", AUTHORING)
        may_approve = not (cfg.admin.four_eyes and session.user.name in authors)
        return render(request, "edition.html", session, info=info, edition=edition,
                      editable=info.state in EDITABLE, choices=cfg.newsletter.choices,
                      config_languages=cfg.newsletter.languages, history=history,
                      actions=EDITION_ACTIONS, may_approve=may_approve,
                      four_eyes=cfg.admin.four_eyes, authors=sorted(authors),
                      require_approval=cfg.newsletter.require_approval,
                      default_at=_default_at(info.scheduled_at, app.clock(), tz),
                      sent=info.state not in (S.DRAFT, S.SCHEDULED, S.APPROVED, S.HELD),
                      test_results=None)

    async def edition_edit(request: Request, session: Session) -> Response:
        eid = edition_id(request)
        form = request.state.form
        info = app.editions.info(eid)
        subjects: dict[str, str | None] = {}
        notes: dict[str, str | None] = {}
        for lang in cfg.newsletter.languages:
            subject = str(form.get(f"subject_{lang}") or "").strip()
            note = str(form.get(f"note_{lang}") or "").strip()
            if subject != info.subjects.get(lang, ""):
                subjects[lang] = subject or None
            if note != info.notes.get(lang, ""):
                notes[lang] = note or None
        if subjects or notes:
            app.editions.edit(eid, subjects=subjects, notes=notes)
            audit(session, "edit", f"edition {eid}", ", ".join(
                [f"subject {lang}" for lang in subjects] + [f"note {lang}" for lang in notes]))
        return RedirectResponse(f"/editions/{eid}", status_code=303)

    async def edition_schedule(request: Request, session: Session) -> Response:
        eid = edition_id(request)
        raw = str(request.state.form.get("at") or "")
        at = parse_local_time(raw.replace("T", " "), tz)
        app.editions.schedule(eid, at)
        audit(session, "schedule", f"edition {eid}", f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC")
        return RedirectResponse(f"/editions/{eid}", status_code=303)

    async def edition_action(request: Request, session: Session) -> Response:
        eid = edition_id(request)
        form = request.state.form
        action = str(form.get("action") or "")
        t = text.for_language(page_language(request))
        if action not in EDITION_ACTIONS:
            raise _Refused(t(N_("Unknown action.")))
        if action == "cancel" and form.get("confirm") != "yes":
            return render(request, "confirm.html", session, info=app.editions.info(eid),
                          action=action)
        if (action == "approve" and cfg.admin.four_eyes
                and session.user.name in accounts.authors(f"edition {eid}", AUTHORING)):
            raise _Refused(t(N_("Four eyes: an editor who did not create, edit or schedule "
                                    "this edition must approve it.")))
        detail = None
        if action == "cancel":
            from mailer.pipeline.send import cancel_edition

            rows = cancel_edition(app, eid, f"cancelled by {session.user.name}")
            detail = f"{rows} message(s) not sent" if rows else None
        else:
            getattr(app.editions, action)(eid)
        audit(session, action, f"edition {eid}", detail)
        return RedirectResponse(f"/editions/{eid}", status_code=303)

    def preview_bytes(eid: int, language: str) -> bytes:
        """The message a sample reader gets, from the one prepare and personalise path."""
        from mailer.pipeline.prepare import Reader, personalise, prepare

        if language not in cfg.newsletter.choices:
            raise _Refused(f"{language!r} is not offered")
        edition = app.editions.load(eid)
        prepared = prepare(app, edition, date=app.clock(), strict=True, languages=[language])
        return personalise(app, prepared, Reader(
            0, "reader@example.org", language,
            unsubscribe_url=f"{cfg.newsletter.public_url}/u/PREVIEW-NOT-A-REAL-TOKEN"))

    async def edition_preview(request: Request, session: Session) -> Response:
        eid = edition_id(request)
        language = request.path_params["language"]
        raw = await asyncio.to_thread(preview_bytes, eid, language)
        if request.path_params.get("ext") == "eml":
            return Response(raw, media_type="message/rfc822", headers={
                "content-disposition": f'attachment; filename="edition-{eid}-{language}.eml"'})
        html = html_with_inline_images(raw)
        return Response(html.encode("utf-8"), media_type="text/html; charset=utf-8", headers={
            "content-security-policy": PREVIEW_CSP, "x-frame-options": "SAMEORIGIN"})

    async def edition_test(request: Request, session: Session) -> Response:
        from mailer.editions.testsend import check_test_addresses
        from mailer.pipeline.send import send_test

        eid = edition_id(request)
        form = request.state.form
        t = text.for_language(page_language(request))
        language = str(form.get("language") or cfg.newsletter.default_language)
        if language not in cfg.newsletter.choices:
            raise _Refused(t(N_("Choose a language.")))
        addresses = check_test_addresses(
            [a for a in re.split(r"[\s,;]+", str(form.get("to") or "")) if a])
        copies = await send_test(app, eid, addresses, language)
        audit(session, "test-send", f"edition {eid}",
              f"{language}, {len(addresses)} address(es)")  # never the addresses themselves
        folder = (str(cfg.delivery.maildir_for("tests") / "new")
                  if cfg.delivery.transport == "maildir" and app.transport_override is None else "")
        return render(request, "test_sent.html", session, info=app.editions.info(eid),
                      language=language, folder=folder,
                      results=[(c.address, c.accepted, c.result.code) for c in copies])

    async def report_page(request: Request, session: Session) -> Response:
        eid = edition_id(request)
        info = app.editions.info(eid)
        report = await run_in_threadpool(edition_report_of, eid)
        t = text.for_language(page_language(request))
        labels = {s: t(s) for s in COLOURS}
        by_domain = [(d, {s.value: n for s, n in row.items()}) for d, row in report.by_domain.items()]
        by_language = [(lang, {s.value: n for s, n in row.items()})
                       for lang, row in report.by_language.items()]
        alert = cfg.newsletter.content_rejection_alert
        flagged = {d for d in report.by_domain
                   if report.rate(d, OutboxState.CONTENT_REJECTED) >= alert
                   and report.by_domain[d].get(OutboxState.CONTENT_REJECTED, 0)}
        return render(request, "report.html", session, info=info, report=report,
                      by_domain=by_domain[:40], by_language=by_language, flagged=flagged,
                      columns=list(COLOURS), labels=labels,
                      exposure=exposure_of_edition(app.engine, eid),
                      chart=stacked_bars(by_domain[:20], labels, title=t(N_("Outcomes by domain"))),
                      chart_lang=stacked_bars(by_language, labels,
                                              title=t(N_("Outcomes by language"))))

    def edition_report_of(eid: int) -> Any:
        return edition_report(app.engine, eid)

    # ------------------------------------------------------------------ mirrors, audit

    async def mirrors_page(request: Request, session: Session, *, error: str = "") -> Response:
        health = load_health(app.engine)
        exposure = exposure_for(app.engine)
        sites = [(i, s, health.get(s.url), exposure.get(s.url))
                 for i, s in enumerate(cfg.mirrors.sites)]
        return render(request, "mirrors.html", session, sites=sites,
                      countries=cfg.mirrors.countries, warnings=cfg.mirrors.warnings, error=error)

    async def mirror_status(request: Request, session: Session) -> Response:
        nonlocal cfg
        form = request.state.form
        status = _STATUSES.get(str(form.get("status") or ""))
        if status is None:
            raise _Refused("unknown status")
        index = int(request.path_params["index"])
        url = str(form.get("url") or "")
        today = app.clock().astimezone(ZoneInfo(tz)).date()
        new = await run_in_threadpool(set_site_status, cfg.path, index, url, status, today,
                                      app.environ)
        # The daemon's file watch picks the change up; this process shows it at once.
        app.replace_config(new)
        cfg = app.config
        audit(session, f"mirror-{status}", url)
        return RedirectResponse("/mirrors", status_code=303)

    async def audit_page(request: Request, session: Session) -> Response:
        return render(request, "audit.html", session, entries=accounts.audit_log(limit=500))

    async def admin_css(request: Request) -> Response:
        assert env.loader is not None
        css, _, _ = env.loader.get_source(env, "admin/admin.css")
        return Response(css, media_type="text/css", headers={"cache-control": "max-age=3600"})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    def get(path: str, handler: Handler, **kw: Any) -> Route:
        return Route(path, guarded(handler, **kw), methods=["GET"])

    def post(path: str, handler: Handler, **kw: Any) -> Route:
        return Route(path, guarded(handler, post=True, **kw), methods=["POST"])

    op = Role.OPERATOR
    routes = [
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/lang/{code}", set_language, methods=["GET"]),
        Route("/admin.css", admin_css, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        post("/logout", logout, enrol=True),
        post("/logout-everywhere", logout_everywhere, enrol=True),
        get("/account", account, enrol=True),
        post("/account/totp", account_totp, enrol=True),
        get("/", dashboard),
        get("/editions", editions_list),
        get("/editions/new", edition_new),
        post("/editions/new", edition_create),
        get("/editions/{edition_id:int}", edition_show),
        post("/editions/{edition_id:int}/edit", edition_edit),
        post("/editions/{edition_id:int}/schedule", edition_schedule),
        post("/editions/{edition_id:int}/action", edition_action),
        post("/editions/{edition_id:int}/test", edition_test),
        get("/editions/{edition_id:int}/preview/{language}.{ext}", edition_preview),
        get("/editions/{edition_id:int}/preview/{language}", edition_preview),
        get("/editions/{edition_id:int}/report", report_page),
        get("/mirrors", mirrors_page, role=op),
        post("/mirrors/{index:int}", mirror_status, role=op),
        get("/audit", audit_page),
    ]
    return Starlette(routes=routes, middleware=[
        Middleware(SecurityHeaders, https=False, csp=ADMIN_CSP)])


def html_with_inline_images(raw: bytes) -> str:
    """Pure: the HTML part of ``raw`` with each ``cid:`` image as a ``data:`` URI, so the
    sandboxed frame shows the images the message carries and fetches nothing."""
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("html",))
    html = str(part.get_content()) if part is not None else ""
    for sub in msg.walk():
        cid = (sub["Content-ID"] or "").strip("<>")
        if sub.get_content_maintype() != "image" or not cid:
            continue
        data = sub.get_payload(decode=True)
        assert isinstance(data, bytes)
        uri = f"data:{sub.get_content_type()};base64,{base64.b64encode(data).decode()}"
        html = html.replace(f"cid:{cid}", uri)
    return html


def _default_at(at: datetime | None, now: datetime, tz: str) -> str:
    """The ``datetime-local`` field's value: the edition's time, else tomorrow 08:00 local."""
    zone = ZoneInfo(tz)
    if at is not None:
        return at.astimezone(zone).strftime("%Y-%m-%dT%H:%M")
    tomorrow = date.fromordinal(now.astimezone(zone).date().toordinal() + 1)
    return f"{tomorrow.isoformat()}T08:00"
