"""The battery's templates, filled for IPv4 and IPv6 targets."""

import pytest

from plugin.battery import BATTERY, TEST_IDS, Envelope, address_literal, render, select

ENVELOPE = Envelope(
    sender="spammer@outside.example", recipient="victim@relay.example",
    target_host="mx1.target.example", target_domain="target.example",
    target_literal="[192.0.2.10]", foreign_literal="[198.51.100.7]")

EXPECTED = {
    "plain": ("<spammer@outside.example>", "<victim@relay.example>"),
    "null-sender": ("<>", "<victim@relay.example>"),
    "spoof-host": ("<spammer@mx1.target.example>", "<victim@relay.example>"),
    "spoof-domain": ("<spammer@target.example>", "<victim@relay.example>"),
    "spoof-literal": ("<spammer@[192.0.2.10]>", "<victim@relay.example>"),
    "spoof-localhost": ("<spammer@localhost>", "<victim@relay.example>"),
    "spoof-unqualified": ("<spammer>", "<victim@relay.example>"),
    "percent-hack-literal": (None, "<victim%relay.example@[192.0.2.10]>"),
    "percent-hack-host": (None, "<victim%relay.example@mx1.target.example>"),
    "percent-hack-empty": (None, "<victim%relay.example@>"),
    "quoted-at": (None, '<"victim@relay.example">'),
    "quoted-percent": (None, '<"victim%relay.example">'),
    "quoted-at-host": (None, '<"victim@relay.example"@mx1.target.example>'),
    "quoted-at-literal": (None, '<"victim@relay.example"@[192.0.2.10]>'),
    "double-at-host": (None, "<victim@relay.example@mx1.target.example>"),
    "double-at-literal": (None, "<victim@relay.example@[192.0.2.10]>"),
    "double-at-empty": (None, "<victim@relay.example@>"),
    "source-route-host": (None, "<@mx1.target.example:victim@relay.example>"),
    "source-route-literal": (None, "<@[192.0.2.10]:victim@relay.example>"),
    "bang-path": (None, "<relay.example!victim>"),
    "bang-path-host": (None, "<relay.example!victim@mx1.target.example>"),
    "bang-path-literal": (None, "<relay.example!victim@[192.0.2.10]>"),
    "unbracketed": (None, "victim@relay.example"),
    "foreign-literal": (None, "<victim@[198.51.100.7]>"),
    "postmaster": (None, "<postmaster@relay.example>"),
    "abuse": (None, "<abuse@relay.example>"),
}


def test_every_row_is_known_and_unique():
    assert len(TEST_IDS) == len(set(TEST_IDS)) == len(EXPECTED)
    assert set(TEST_IDS) == set(EXPECTED)
    assert all(test.purpose for test in BATTERY)


@pytest.mark.parametrize("attempt", render(BATTERY, ENVELOPE), ids=lambda a: a.test.id)
def test_templates_render_the_exact_forms(attempt):
    mail_from, rcpt_to = EXPECTED[attempt.test.id]
    # Recipient tricks use the plain outside sender, so each row isolates one trick.
    assert attempt.mail_from == (mail_from or "<spammer@outside.example>")
    assert attempt.rcpt_to == rcpt_to


def test_ipv6_targets_use_rfc5321_literals():
    assert address_literal("2001:db8::25") == "[IPv6:2001:db8::25]"
    assert address_literal("192.0.2.10") == "[192.0.2.10]"
    envelope = Envelope("a@b.example", "c@d.example", "[IPv6:::1]", "[IPv6:::1]",
                        "[IPv6:::1]", "[192.0.2.1]")
    rows = {attempt.test.id: attempt for attempt in render(BATTERY, envelope)}
    assert rows["source-route-literal"].rcpt_to == "<@[IPv6:::1]:c@d.example>"


def test_no_template_can_smuggle_a_line_break():
    for attempt in render(BATTERY, ENVELOPE):
        assert "\r" not in attempt.mail_from + attempt.rcpt_to
        assert "\n" not in attempt.mail_from + attempt.rcpt_to


def test_select_keeps_battery_order_and_rejects_unknown_ids():
    assert [t.id for t in select(["abuse", "plain"])] == ["plain", "abuse"]
    assert select(["all"]) == BATTERY
    assert select(None) == BATTERY
    with pytest.raises(ValueError, match="unknown test id: nope"):
        select(["plain", "nope"])
