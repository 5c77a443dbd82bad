"""Provider rules: the shipped data file drives classification; an operator's file extends it;
a bad file is refused naming the file, the key and the line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import (
    DEFAULT_CONTENT_REJECTIONS,
    DeliverySettings,
    load_config,
    shipped_provider_rules,
)
from mailer.delivery.classify import Classifier, SendResult, notice_text
from mailer.delivery.providers import SHIPPED_RULES, Verdict
from mailer.errors import ConfigError
from mailer.models import OutboxState
from tests.config.test_config import GOOD, write

RULES = shipped_provider_rules()
C = Classifier(DEFAULT_CONTENT_REJECTIONS, max_attempts=5, max_age=timedelta(days=3),
               backoff_base=timedelta(minutes=1), providers=RULES)


def test_the_shipped_file_names_every_family_and_its_domains() -> None:
    names = [f.name for f in RULES.families]
    assert names == ["qq", "netease", "sina", "sohu", "aliyun", "gmail", "outlook", "yahoo"]
    qq, netease = RULES.get("qq"), RULES.get("netease")
    assert qq is not None
    assert netease is not None
    assert {"qq.com", "foxmail.com", "vip.qq.com"} <= qq.domains
    assert {"163.com", "126.com", "yeah.net", "vip.163.com"} <= netease.domains
    assert RULES.family_of("mx.vip.163.com") is netease  # a subdomain counts
    assert RULES.family_of("example.org") is None
    # The default settings carry the shipped rules.
    assert DeliverySettings().providers == RULES


@pytest.mark.parametrize(("code", "reply", "domain", "state", "verdict"), [
    # NetEase (http://help.163.com/09/1224/17/5RAJ4LMH00753VB8.html)
    (421, "HL:ICC 163 mx3,too many connections", "163.com", OutboxState.DEFERRED,
     Verdict.SLOW_DOWN),
    (421, "HL:REP 126 smtp1,bad reputation", "126.com", OutboxState.DEFERRED, Verdict.SLOW_DOWN),
    (421, "HL:IFC 163 mx3,too many messages", "yeah.net", OutboxState.DEFERRED,
     Verdict.SLOW_DOWN),
    (451, "DT:SPM 163 mx14, temporarily rejected", "163.com", OutboxState.DEFERRED,
     Verdict.CONTENT),
    (554, "DT:SPM 163 smtp14,EsCowAD3 1700000000", "163.com", OutboxState.CONTENT_REJECTED,
     Verdict.CONTENT),
    (450, "DT:RBL 163 mx1, ip in blocklist", "163.com", OutboxState.DEFERRED,
     Verdict.BLOCKLISTED),
    (554, "RP:TRC 163 mx2, domain reputation", "vip.163.com", OutboxState.DEFERRED,
     Verdict.BLOCKLISTED),
    # QQ
    (550, "Mailbox unavailable or access denied", "qq.com", OutboxState.DEFERRED, Verdict.DEFER),
    (550, "Mail content denied. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022",
     "foxmail.com", OutboxState.CONTENT_REJECTED, Verdict.CONTENT),
    # A 5.1.x code outranks any rule: the mailbox is gone.
    (550, "5.1.1 Mailbox unavailable or access denied", "qq.com", OutboxState.BOUNCED, None),
    # The wording is the provider's: a relay passing it on for another domain is understood.
    (421, "HL:ICC 163 mx3", "example.org", OutboxState.DEFERRED, Verdict.SLOW_DOWN),
    # No rule: the generic ones.
    (550, "5.7.1 relay denied", "163.com", OutboxState.FAILED, None),
    (451, "4.7.1 greylisted", "163.com", OutboxState.DEFERRED, None),
])
def test_replies_follow_the_provider_rules(code: int, reply: str, domain: str,
                                           state: OutboxState, verdict: Verdict | None) -> None:
    found, _family, rule = C.judge(code, reply, domain)
    assert found is state
    assert (rule.verdict if rule else None) is verdict


def test_a_temporary_content_refusal_is_retried_after_two_minutes_then_rejected() -> None:
    r = SendResult(451, "DT:SPM 163 mx14, temporarily rejected")
    first = C.decide(r, attempts=1, age=timedelta(0), rand=0.9, domain="163.com")
    assert (first.state, first.retry_in) == (OutboxState.DEFERRED, timedelta(minutes=2))
    assert (first.verdict, first.family) == (Verdict.CONTENT, "netease")
    last = C.decide(r, attempts=5, age=timedelta(0), rand=0.9, domain="163.com")
    assert last.state is OutboxState.CONTENT_REJECTED  # not the reader's fault: not failed
    assert not last.suppress


def test_a_blocklisted_reply_holds_the_row_whatever_the_retry_limits() -> None:
    r = SendResult(450, "DT:RBL 163 mx1")
    d = C.decide(r, attempts=5, age=timedelta(days=2, hours=23), rand=0.5, domain="163.com")
    assert (d.state, d.retry_in, d.verdict, d.family) == (
        OutboxState.DEFERRED, timedelta(hours=24), Verdict.BLOCKLISTED, "netease")


OWN = """\
[netease]
domains = ["163.com", "corp-on-163.example"]

[[netease.rules]]
match = "HL:XYZ"
outcome = "bounce"

[corpmail]
label = "Corp Mail"
domains = ["corp.example"]

[[corpmail.rules]]
match = "(?i)slow down please"
outcome = "slow_down"
"""


def test_an_operators_file_adds_families_and_puts_its_rules_first(tmp_path: Path) -> None:
    (tmp_path / "providers.toml").write_text(OWN, encoding="utf-8")
    text = GOOD.replace('transport = "smtp"', 'transport = "smtp"\nproviders_file = "providers.toml"')
    rules = load_config(write(tmp_path, text), {"SMTP_PASSWORD": "x"}).delivery.providers
    netease = rules.get("netease")
    assert netease is not None
    assert netease.domains == {"163.com", "corp-on-163.example"}  # replaced
    assert netease.label == "NetEase (163, 126, yeah.net)"  # kept
    assert netease.rules[0].verdict is Verdict.BOUNCE  # the operator's first
    assert len(netease.rules) == len(RULES.get("netease").rules) + 1  # type: ignore[union-attr]
    assert rules.get("corpmail") is not None
    assert rules.get("qq") is not None
    c = Classifier((), max_attempts=3, max_age=timedelta(days=1),
                   backoff_base=timedelta(minutes=1), providers=rules)
    assert c.state_for(550, "HL:XYZ", "163.com") is OutboxState.BOUNCED
    assert c.judge(421, "Slow down please", "corp.example")[2].verdict is Verdict.SLOW_DOWN  # type: ignore[union-attr]


@pytest.mark.parametrize(("body", "key", "line"), [
    ('[x]\ndomains = ["x.example"]\n\n[[x.rules]]\nmatch = "(unclosed"\noutcome = "defer"\n',
     "x.rules[0].match", 5),
    ('[x]\ndomains = ["x.example"]\n\n[[x.rules]]\nmatch = "a"\noutcome = "maybe"\n',
     "x.rules[0].outcome", 6),
    ('[x]\ndomains = ["x.example"]\n\n[[x.rules]]\nmatch = "a"\noutcome = "defer"\n\n'
     '[[x.rules]]\nmatch = "b"\noutcome = "defer"\ncodes = [250]\n', "x.rules[1].codes[0]", 11),
    ('[x]\ndomains = ["x.example"]\n\n[[x.rules]]\nmatch = "a"\noutcome = "defer"\nhold = "1h"\n',
     "x.rules[0].hold", 7),
    ('[x]\ndomains = ["not a domain"]\n', "x.domains[0]", 2),
    ('[x]\ndomain = ["x.example"]\n', "x.domain", 2),
    ('[x]\ndomains = ["x.example"]\n\n[[x.rules]]\nmatch = "a"\noutcome = "defer"\nnotice = "yes"\n',
     "x.rules[0].notice", 7),
])
def test_a_bad_rules_file_names_its_file_key_and_line(tmp_path: Path, body: str, key: str,
                                                      line: int) -> None:
    rules = tmp_path / "providers.toml"
    rules.write_text(body, encoding="utf-8")
    text = GOOD.replace('transport = "smtp"', 'transport = "smtp"\nproviders_file = "providers.toml"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {"SMTP_PASSWORD": "x"})
    err = info.value
    assert (err.path, err.key, err.line) == (rules, key, line)
    assert str(rules) in str(err)


def test_a_missing_rules_file_names_the_config_key(tmp_path: Path) -> None:
    text = GOOD.replace('transport = "smtp"', 'transport = "smtp"\nproviders_file = "nope.toml"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"nope\.toml") as info:
        load_config(path, {"SMTP_PASSWORD": "x"})
    assert (info.value.path, info.value.key, info.value.line) == (path, "delivery.providers_file", 19)


def test_domain_rates_take_hourly_and_daily_caps(tmp_path: Path) -> None:
    text = GOOD + '\n[delivery.domain_rates]\n"qq.com" = 5\n' \
        '"163.com" = { rate = 2, per_hour = 3000, per_day = 100000 }\n"126.com" = { per_day = 50 }\n'
    d = load_config(write(tmp_path, text), {"SMTP_PASSWORD": "x", "MIRROR_SECRET": "s"}).delivery
    assert d.domain_rates == {"qq.com": 5.0, "163.com": 2.0}
    assert d.domain_caps["163.com"].per_hour == 3000
    assert d.domain_caps["163.com"].per_day == 100000
    assert d.domain_caps["126.com"].per_hour is None
    assert d.limited_domains == {"qq.com", "163.com", "126.com"}
    bad = GOOD + '\n[delivery.domain_rates]\n"163.com" = { per_hour = 0 }\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, bad), {"SMTP_PASSWORD": "x"})
    assert info.value.key == 'delivery.domain_rates.163.com.per_hour'


def test_the_shipped_file_is_next_to_the_code() -> None:
    assert SHIPPED_RULES.name == "providers.toml"
    assert SHIPPED_RULES.exists()


# The Chinese verdicts QQ, NetEase and Sina write in a bounce's notice (issue: only the reply
# line was matched). Each classifies like the English reply that means the same.
@pytest.mark.parametrize(("notice", "domain", "state"), [
    ("退信原因：邮件内容被系统判定为垃圾邮件。", "163.com", OutboxState.CONTENT_REJECTED),
    ("您的邮件内容不符合规范，已被退回。", "126.com", OutboxState.CONTENT_REJECTED),
    ("该邮件被退回: 被判定为垃圾邮件", "sina.com", OutboxState.CONTENT_REJECTED),
    ("发送的邮件内容包含了未被许可的信息，或被系统识别为垃圾邮件。请检查是否有用户发送病毒或者垃圾邮件",
     "qq.com", OutboxState.CONTENT_REJECTED),
    ("退信原因\n用户不存在", "qq.com", OutboxState.BOUNCED),
    ("退信原因：邮箱不存在。", "163.com", OutboxState.BOUNCED),
    ("收件人地址不存在", "sina.cn", OutboxState.BOUNCED),
    ("退信原因：收件人邮箱地址不存在。", "sina.com", OutboxState.BOUNCED),
    ("收件人邮箱空间已满，无法接收邮件", "qq.com", OutboxState.DEFERRED),
    ("对方邮箱容量已满", "163.com", OutboxState.DEFERRED),
    ("收件人拒收", "qq.com", OutboxState.DEFERRED),  # like "rejected by recipient": soft
    # Traditional characters, full-width spaces and a space in the middle of the verdict.
    ("退信原因：用戶不存在", "qq.com", OutboxState.BOUNCED),
    ("邮件内容被系统判定为垃圾　邮件", "163.com", OutboxState.CONTENT_REJECTED),
    ("收件人地址 不存在", "example.net", OutboxState.BOUNCED),  # hosted: every family is asked
])
def test_a_chinese_verdict_in_a_notice_classifies_like_the_english_reply(
        notice: str, domain: str, state: OutboxState) -> None:
    found = C.judge_notice(550, notice, domain)
    assert found is not None, notice
    assert found[0] is state
    assert found[1]
    assert found[1] in notice_text(notice)  # the line that said it


def test_a_notice_is_read_only_by_notice_rules_and_a_4xx_proves_nothing() -> None:
    # Sina's reply rule "(spam|content)" would match half the words of an English notice.
    assert C.judge_notice(550, "The content of your message could not be delivered. Is it spam?",
                          "sina.com") is None
    assert C.judge_notice(550, "很抱歉您发送的邮件被退回，以下是该邮件的相关信息", "qq.com") is None
    assert C.judge_notice(450, "用户不存在", "qq.com") == (OutboxState.DEFERRED, "用户不存在")
    # The same words in an SMTP reply count too, through the ordinary rules.
    assert C.state_for(550, "用户不存在", "qq.com") is OutboxState.BOUNCED
    assert C.state_for(554, "邮件内容被系统判定为垃圾邮件", "163.com") is OutboxState.CONTENT_REJECTED


def test_an_operators_notice_rule_is_read(tmp_path: Path) -> None:
    (tmp_path / "providers.toml").write_text(
        '[corpmail]\ndomains = ["corp.example"]\n\n[[corpmail.rules]]\nmatch = "信箱已停用"\n'
        'outcome = "bounce"\nnotice = true\n', encoding="utf-8")
    text = GOOD.replace('transport = "smtp"', 'transport = "smtp"\nproviders_file = "providers.toml"')
    rules = load_config(write(tmp_path, text), {"SMTP_PASSWORD": "x"}).delivery.providers
    c = Classifier((), max_attempts=3, max_age=timedelta(days=1),
                   backoff_base=timedelta(minutes=1), providers=rules)
    assert c.judge_notice(550, "退信原因：信箱 已停用", "corp.example") == (
        OutboxState.BOUNCED, "退信原因:信箱已停用")


_HANZI = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
_GAP = st.text(alphabet=" \t\u3000", min_size=1, max_size=3)


@given(st.lists(_HANZI, min_size=1, max_size=12), st.data())
def test_notice_text_drops_any_spacing_between_chinese_characters(chars: list[str],
                                                                  data: st.DataObject) -> None:
    spaced = "".join(c + (data.draw(_GAP) if i < len(chars) - 1 and data.draw(st.booleans())
                          else "") for i, c in enumerate(chars))
    assert notice_text(spaced) == notice_text("".join(chars))


@given(st.text(max_size=80))
def test_notice_text_is_idempotent_and_keeps_lines(text: str) -> None:
    once = notice_text(text)
    assert notice_text(once) == once
    assert once.count("\n") == text.count("\n")  # only spaces inside a line go


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80))
def test_notice_text_leaves_ascii_alone(text: str) -> None:
    assert notice_text(text) == text
