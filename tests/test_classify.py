"""Every rule of the classification table, with replies real servers send."""

import pytest

from plugin.classify import MAIL, RCPT, RULES, Outcome, judge, rule_for
from plugin.reply import Reply

A, R, U, T = Outcome.ACCEPTED, Outcome.REFUSED, Outcome.INCONCLUSIVE, Outcome.TEMPFAIL

CASES = [
    # stage, code, text, outcome, reason
    (RCPT, 250, "2.1.5 Ok", A, "recipient accepted"),
    (RCPT, 251, "User not local; will forward", A, "recipient accepted"),
    (RCPT, 252, "Cannot VRFY user, but will accept", A, "recipient accepted"),
    (MAIL, 250, "2.1.0 Ok", A, "sender accepted"),
    (RCPT, 450, "4.2.0 <x@y>: Recipient address rejected: Greylisted, see "
                "http://postgrey.schweikert.ch/", T, "greylisted"),
    (RCPT, 451, "4.7.1 Please try again later (graylisting)", T, "greylisted"),
    (RCPT, 454, "4.7.1 <x@relay.example>: Relay access denied", R,
     "relaying refused (deferred by policy)"),
    (RCPT, 421, "4.7.0 mx closing connection", T, "server closing the connection"),
    (RCPT, 450, "4.1.2 <x@nowhere.example>: Recipient address rejected: Domain not found",
     T, "temporary failure"),
    (MAIL, 452, "4.3.1 Insufficient system storage", T, "temporary failure"),
    (MAIL, 530, "5.7.0 Must issue a STARTTLS command first", U,
     "server demands STARTTLS first"),
    (RCPT, 550, "5.7.0 Encryption required for requested authentication mechanism", U,
     "server demands STARTTLS first"),
    (MAIL, 530, "Must issue a STARTTLS command first", U, "server demands STARTTLS first"),
    (MAIL, 530, "Authentication required", R, "authentication required"),
    (RCPT, 554, "5.7.0 Authentication required", R, "authentication required"),
    (RCPT, 556, "5.1.10 <x@null.example>: Recipient address rejected: Domain null.example "
                "does not accept mail (nullMX)", U, "recipient domain has a null MX"),
    (RCPT, 556, "Recipient address rejected: nullMX", U, "recipient domain has a null MX"),
    (RCPT, 550, "5.1.2 <x@nowhere.example>: Recipient address rejected: Domain not found",
     U, "recipient domain unknown"),
    (MAIL, 550, "5.1.8 <x@nowhere.example>: Sender address rejected: Domain not found",
     U, "sender domain unknown"),
    (MAIL, 550, "5.7.27 <x@null.example>: Sender address rejected: null MX",
     U, "sender domain has a null MX"),
    (RCPT, 550, "5.4.4 Unable to route", U, "routing or network problem"),
    (RCPT, 501, "5.1.3 Bad recipient address syntax", R, "address syntax refused"),
    (MAIL, 501, "5.1.7 Bad sender address syntax", R, "address syntax refused"),
    (RCPT, 555, "5.5.4 Unsupported option", R, "address form refused (syntax)"),
    (RCPT, 554, "5.7.1 Service unavailable; Client host [192.0.2.9] blocked using "
                "zen.spamhaus.org", U,
     "the checking client itself is blocked; relay policy not reached"),
    (RCPT, 504, "5.5.2 <x>: Helo command rejected: need fully-qualified hostname", U,
     "HELO name refused; relay policy not reached (see --helo)"),
    (RCPT, 554, "<x>: Helo command rejected: Host not found", U,
     "HELO name refused; relay policy not reached (see --helo)"),
    (RCPT, 550, "Verification failed for <x@mx.example> Unrouteable address Sender verify "
                "failed", U, "sender verification failed; relay policy not reached (see --from)"),
    (RCPT, 554, "5.7.1 <x@relay.example>: Relay access denied", R, "refused by policy"),
    (RCPT, 550, "Unrouteable address", U, "recipient domain unknown"),
    (MAIL, 550, "Sender domain does not exist", U, "sender domain unknown"),
    (RCPT, 550, "relay not permitted", R, "relaying denied"),
    (RCPT, 550, "we do not relay: not permitted to relay", R, "relaying denied"),
    (RCPT, 550, "Invalid recipient: <relaytest@relay.example.net>", R, "permanently refused"),
    (MAIL, 501, "<relaytest@[127.0.1.31]>: domain literals not allowed", R,
     "address form refused (syntax)"),
    (RCPT, 550, "Restricted characters in address", R, "address form refused"),
    (RCPT, 553, "sorry, that domain isn't in my list of allowed rcpthosts", R,
     "mailbox name not allowed"),
    (RCPT, 500, "Syntax error", R, "address form refused (syntax)"),
    (MAIL, 501, "<spam@[127.0.0.1]>: domain literals not allowed", R,
     "address form refused (syntax)"),
    (RCPT, 555, "Syntax error in parameters", R, "address form refused (syntax)"),
    (RCPT, 503, "Bad sequence of commands", U, "command not usable here"),
    (RCPT, 550, "5.1.1 <x@[192.0.2.10]>: Recipient address rejected: User unknown in "
                "local recipient table", R, "mailbox unknown (taken as local)"),
    (RCPT, 550, "Invalid recipient", R, "permanently refused"),
    (RCPT, 354, "go ahead", U, "unexpected reply"),
]


@pytest.mark.parametrize(("stage", "code", "text", "outcome", "reason"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[4]}" for c in CASES])
def test_rule(stage, code, text, outcome, reason):
    rule = rule_for(stage, Reply(code, (text,)))
    assert (rule.outcome, rule.reason) == (outcome, reason)


def test_every_rule_is_exercised():
    hit = {id(rule_for(stage, Reply(code, (text,)))) for stage, code, text, *_ in CASES}
    missing = [rule for rule in RULES if id(rule) not in hit]
    assert not missing, f"rules without a test case: {missing}"


def test_enhanced_code_must_agree_with_reply_class():
    # "2.1.5" after a 550 is garbage, not a 5.x.x code: falls to the generic 5xx rule.
    assert Reply(550, ("2.1.5 whatever",)).enhanced is None
    assert rule_for(RCPT, Reply(550, ("2.1.5 whatever",))).reason == "permanently refused"


def test_judge_mail_refusal_closes_the_road_and_never_reaches_rcpt():
    verdict = judge(Reply(553, ("5.1.8 bad sender",)), None)
    assert verdict.outcome is U and not verdict.reached_rcpt
    verdict = judge(Reply(554, ("5.7.1 Sender rejected",)), None)
    assert verdict.outcome is R and verdict.reason == "MAIL FROM refused by policy"


def test_judge_rcpt_decides_after_accepted_mail():
    verdict = judge(Reply(250, ("ok",)), Reply(250, ("ok",)))
    assert verdict.outcome is A and verdict.reached_rcpt
    assert judge(Reply(250, ("ok",)), None).outcome is Outcome.UNTESTED
    assert judge(None, None).outcome is Outcome.UNTESTED
