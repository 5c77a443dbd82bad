"""One answer to "is this host the origin": config, importer and rewriter agree on every host."""

from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from mailer.config import MirrorSettings
from mailer.mirrors.importers import Found, plan_import
from mailer.mirrors.rewrite import origin_path
from mailer.mirrors.sites import BLOGSPOT_COUNTRY_SUFFIXES, is_origin_host, names_an_origin

ORIGINS = ("https://citizens-rights.blogspot.com", "https://example.org/blog")

hosts = st.one_of(
    st.sampled_from(BLOGSPOT_COUNTRY_SUFFIXES).map(lambda cc: f"citizens-rights.blogspot.{cc}"),
    st.sampled_from(BLOGSPOT_COUNTRY_SUFFIXES).map(lambda cc: f"other.blogspot.{cc}"),
    st.sampled_from(["citizens-rights.blogspot.com", "example.org", "example.org.hk",
                     "www.example.org", "mirror.example.net", "Citizens-Rights.Blogspot.HK"]),
)


@given(hosts)
def test_rewriter_importer_and_config_rule_agree(host: str) -> None:
    origin = is_origin_host(host, ORIGINS)
    # The rewriter: a link to an origin host (below the origin's path) gets mirror alternatives.
    assert (origin_path(f"https://{host}/blog/p.html", ORIGINS) is not None) == origin
    # The importer: a candidate on an origin host is skipped, never added as a mirror.
    settings = MirrorSettings(origins=ORIGINS)
    plan = plan_import(settings, [Found("citizens-rights.blogspot.com", f"https://{host}/", "https")],
                       "reserve", date(2026, 12, 2))
    assert (plan.skipped == ((f"https://{host}", "is on an origin's host"),)) == origin
    assert bool(plan.added) == (not origin)


def test_a_list_entry_under_a_country_domain_or_www_is_about_our_blog() -> None:
    assert names_an_origin("citizens-rights.blogspot.hk", ORIGINS)
    assert names_an_origin("https://www.example.org/", ORIGINS)
    assert not names_an_origin("other.blogspot.hk", ORIGINS)
    assert not names_an_origin("", ORIGINS)
