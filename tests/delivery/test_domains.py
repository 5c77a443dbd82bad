"""Which recipient domains the outbox keeps by name: pure, and through a real outbox."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from mailer.delivery.domains import OTHER, PUBLIC_PROVIDERS, outbox_domain
from mailer.delivery.outbox import Outbox
from mailer.schema import outbox as outbox_table
from tests.delivery.helpers import FakeClock, Rcpt, make_edition

label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=2, max_size=4).map(".".join)


@given(domain, st.sets(domain, max_size=3))
def test_only_public_providers_and_rate_limited_domains_keep_their_name(
        name: str, limited: set[str]) -> None:
    got = outbox_domain(name, limited)
    if got == OTHER:
        assert name not in PUBLIC_PROVIDERS
        assert not any(name == d or name.endswith("." + d) for d in limited)
    else:
        assert got == name
        assert name in PUBLIC_PROVIDERS or any(name == d or name.endswith("." + d)
                                               for d in limited)


def test_examples() -> None:
    assert outbox_domain("QQ.com") == "qq.com"
    assert outbox_domain("vip.163.com") == "vip.163.com"
    assert outbox_domain("rights-group.org.hk") == OTHER
    assert outbox_domain("mail.corp.example", {"corp.example"}) == "mail.corp.example"
    assert outbox_domain("corp.example.net", {"corp.example"}) == OTHER


def test_the_outbox_keeps_no_identifying_domain(db: Engine) -> None:
    box = Outbox(db, FakeClock(), rate_limited={"Corp.Example"})
    ed = make_edition(db)
    people = [Rcpt(1, "a@qq.com"), Rcpt(2, "b@rights-group.org.hk"), Rcpt(3, "c@mail.corp.example"),
              Rcpt(4, "d@uni.edu.tw")]
    assert box.enqueue(ed, people) == 4
    with db.connect() as conn:
        rows = {int(r.subscriber_id): r.domain for r in
                conn.execute(select(outbox_table.c.subscriber_id, outbox_table.c.domain))}
    assert rows == {1: "qq.com", 2: OTHER, 3: "mail.corp.example", 4: OTHER}
