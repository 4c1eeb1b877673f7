"""Classification of replies seen from real MTAs (tests/test_real_mtas.py), verbatim.

Each row is a reply a Debian package's server sent to the battery, with the outcome
it must get.  The rows that made the rule table change come first.
"""

import pytest

from plugin.classify import MAIL, RCPT, judge
from plugin.reply import Reply

# stage, code, the reply's text lines as the server sent them, outcome, why
REAL = [
    # Postfix 3.7, Debian's stock smtpd_relay_restrictions (defer_unauth_destination):
    # the relay refusal comes as 454.  It was "tempfail", so stock Postfix read WARNING.
    (RCPT, 454, ["4.7.1 <relaytest@relay.example.net>: Relay access denied"], "refused",
     "relaying refused (deferred by policy)"),
    (RCPT, 454, ["4.7.1 <relaytest%relay.example.net@mx2.backup.example>: Relay access "
                 "denied"], "refused", "relaying refused (deferred by policy)"),
    # Exim 4.96, configure.default ACL, spoofed local sender that is no mailbox there.
    # It was "recipient domain unknown" (the text says "Unrouteable address").
    (RCPT, 550, ["Verification failed for <relaytest@mx.exim-strict.example>",
                 "Unrouteable address", "Sender verify failed"], "inconclusive",
     "sender verification failed; relay policy not reached (see --from)"),
    # Unchanged, for contrast: what the same servers say when they decide.  Only the
    # outcome is checked for these (reason None): the text rule "relay" also matches the
    # echoed address relaytest@relay.example.net, so some get "relaying denied" as their
    # reason; the outcome is right either way.
    (RCPT, 554, ["5.7.1 <relaytest@relay.example.net>: Relay access denied"], "refused",
     None),
    (RCPT, 450, ["4.1.2 <relaytest@relay.example.net>: Recipient address rejected: "
                 "Domain not found"], "tempfail", None),
    (RCPT, 550, ["relay not permitted"], "refused", None),
    (RCPT, 550, ["Restricted characters in address"], "refused", None),
    (MAIL, 501, ["<relaytest@[127.0.1.31]>: domain literals not allowed"], "refused", None),
    (RCPT, 550, ["Invalid recipient: <relaytest@relay.example.net>"], "refused", None),
    (RCPT, 501, ["5.1.3 Recipient address syntax error"], "refused", None),
]


@pytest.mark.parametrize(("stage", "code", "lines", "outcome", "reason"), REAL,
                         ids=[f"{row[0]}-{row[1]}-{row[2][0][:30]}" for row in REAL])
def test_real_reply(stage: str, code: int, lines: list[str], outcome: str,
                    reason: str | None) -> None:
    reply = Reply(code, tuple(lines))
    mail = reply if stage == MAIL else Reply(250, ("2.1.0 Ok",))
    rcpt = reply if stage == RCPT else None
    judgement = judge(mail, rcpt)
    assert judgement.outcome.value == outcome
    if reason is not None:
        assert judgement.reason.removeprefix("MAIL FROM ") == reason
