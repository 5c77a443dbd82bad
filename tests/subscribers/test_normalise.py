"""Normalisation and validation: pure, checked with hypothesis against email-validator."""

from __future__ import annotations

import email_validator
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from subscribers.normalise import (
    InvalidAddress,
    _fast_ok,
    ascii_domain,
    delivery_form,
    index_form,
    validate,
)

label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
local = st.from_regex(r"[A-Za-z0-9_%+\-]{1,12}(?:\.[A-Za-z0-9_%+\-]{1,8}){0,2}", fullmatch=True)
tld = st.sampled_from(["com", "org", "cn", "net", "hk", "tw", "xyz"])
ascii_address = st.builds(lambda lo, d, t: f"{lo}@{d}.{t}", local, label, tld)
any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@given(st.one_of(ascii_address, any_text, st.builds(lambda a, b: f"{a}@{b}", any_text, any_text)))
def test_fast_path_accepts_only_what_email_validator_accepts(candidate: str) -> None:
    """The fast path is a strict subset of email-validator, with the same result."""
    if not _fast_ok(candidate):
        return
    info = email_validator.validate_email(candidate, check_deliverability=False)
    assert validate(candidate) == info.normalized.rpartition("@")[0] + "@" + info.ascii_domain


@given(ascii_address)
def test_domain_is_case_insensitive_local_part_is_kept(address: str) -> None:
    lo, _, dom = address.rpartition("@")
    shouted = f"{lo}@{dom.upper()}"
    assert index_form(shouted) == index_form(address)
    assert delivery_form(shouted).rpartition("@")[0] == lo
    assert validate(shouted) == validate(address)


@given(ascii_address)
def test_normalisation_is_idempotent(address: str) -> None:
    once = index_form(address)
    assert index_form(once) == once
    assert delivery_form(delivery_form(address)) == delivery_form(address)
    assert validate(validate(address)) == validate(address)


@given(st.sampled_from(["bücher", "例子", "中文网", "münchen", "ελληνικά"]), tld)
def test_unicode_and_punycode_domains_index_the_same(word: str, top: str) -> None:
    unicode_domain = f"{word}.{top}"
    puny = ascii_domain(unicode_domain)
    assert puny.isascii()
    assert puny.startswith("xn--")
    assert index_form(f"reader@{unicode_domain}") == index_form(f"reader@{puny}")
    assert index_form(f"reader@{unicode_domain.upper()}") == index_form(f"reader@{puny}")


def test_gmail_dots_only_when_configured() -> None:
    a, b = "First.Last+news@gmail.com", "firstlast@googlemail.com"
    assert index_form(a) != index_form(b)
    assert index_form(a, gmail_dots=True) == index_form(b, gmail_dots=True)
    # Nothing provider-specific leaks to other providers.
    assert index_form("first.last@qq.com", gmail_dots=True) == "first.last@qq.com"


@given(ascii_address)
def test_case_folding_only_for_the_listed_domains(address: str) -> None:
    lo, _, dom = address.rpartition("@")
    listed = frozenset({dom})
    upper, lower = f"{lo.upper()}@{dom}", f"{lo.lower()}@{dom}"
    assert index_form(upper, fold_case=listed) == index_form(lower, fold_case=listed)
    once = index_form(address, fold_case=listed)
    assert index_form(once, fold_case=listed) == once  # a folded form folds to itself
    # Any other domain keeps the local part as typed.
    others = frozenset({"qq.com"}) if dom != "qq.com" else frozenset({"163.com"})
    assert index_form(address, fold_case=others) == index_form(address)
    assume(upper != lower)
    assert index_form(upper) != index_form(lower)


@pytest.mark.parametrize("bad", ["", "plain", "@qq.com", "a@", "a b@qq.com", "a@@qq.com",
                                 "a@localhost", "x" * 65 + "@qq.com", "a@-bad-.com"])
def test_invalid_addresses_are_refused_without_echo(bad: str) -> None:
    with pytest.raises(InvalidAddress) as exc:
        validate(bad)
    if bad:
        assert bad not in str(exc.value)


def test_internationalised_addresses_validate() -> None:
    assert validate("user@Bücher.DE") == "user@xn--bcher-kva.de"
    assert validate("  张三@qq.com ") == "张三@qq.com"


@given(any_text)
def test_validate_never_raises_anything_else(text: str) -> None:
    try:
        out = validate(text)
    except InvalidAddress:
        return
    assume(out)
    assert "@" in out
