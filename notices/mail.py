"""Sending email over SMTP, shared by notices and owner alerts.

:func:`send_email` hands one :class:`email.message.EmailMessage` to the SMTP
server named in :class:`config.settings.NoticeSettings` (STARTTLS and login
when configured; implicit TLS on port 465). Every failure becomes
:class:`notices.errors.MailError` with a message that names the server and the
reason, never a raw ``smtplib`` exception.

Header values that may carry text from crawled pages or users go through
:func:`safe_header` first, so a newline can never start a new header.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import smtplib
import ssl
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from config.settings import NoticeSettings
from notices.errors import AddressError, MailError

log = logging.getLogger(__name__)

__all__ = ["AddressError", "Attachment", "MailError", "build_message", "safe_header", "send_email", "single_address"]

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators. All of
# them can break a header or hide text from the person who reads it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


def single_address(text: str) -> str:
    """One mailbox address, lower-cased, or AddressError saying what is wrong.

    Account emails become the To: of alert emails and the contact in notices,
    so a value must be exactly one address: no list (``a@x, b@y``), no display
    name, no quoting, no whitespace or control characters (email-validator's
    syntax check, without DNS). Reserved test domains (``.test``) are allowed.
    """
    from email_validator import EmailNotValidError, validate_email

    value = text.strip()
    try:
        checked = validate_email(value, check_deliverability=False, test_environment=True,
                                 allow_quoted_local=False, allow_display_name=False, allow_domain_literal=False)
    except EmailNotValidError as exc:
        raise AddressError(f"not a single email address: {value[:100]!r} ({exc})") from None
    return checked.normalized.lower()


def safe_header(value: object, max_length: int = 900) -> str:
    """One line of text safe to put in an email header.

    Control characters (newlines included) and bidirectional overrides become
    single spaces, runs of spaces collapse, and the result is cut to
    ``max_length`` characters."""
    text = _CONTROL.sub(" ", str(value))
    text = re.sub(r"\s{2,}", " ", text).strip()
    return text[:max_length]


Attachment = tuple[str, bytes, str]
"""(file name, content, MIME type such as ``application/zip``)."""


def build_message(
    settings: NoticeSettings,
    to: str | Iterable[str],
    subject: str,
    text: str,
    html: str | None = None,
    attachments: Iterable[Attachment] = (),
    reply_to: str | None = None,
    cc: str | Iterable[str] | None = None,
) -> EmailMessage:
    """A multipart message: text (and HTML alternative when given) plus attachments.

    Every header value passes through :func:`safe_header`."""
    msg = EmailMessage()
    msg["From"] = safe_header(settings.from_address)
    msg["To"] = safe_header(to if isinstance(to, str) else ", ".join(to))
    if cc:
        msg["Cc"] = safe_header(cc if isinstance(cc, str) else ", ".join(cc))
    if reply_to:
        msg["Reply-To"] = safe_header(reply_to)
    msg["Subject"] = safe_header(subject)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    domain = settings.from_address.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = make_msgid(domain=safe_header(domain))
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for name, data, given_mime in attachments:
        mime = given_mime or mimetypes.guess_type(name)[0] or "application/octet-stream"
        maintype, _, subtype = mime.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=safe_header(name, 200))
    return msg


def send_email(settings: NoticeSettings, message: EmailMessage) -> None:
    """Deliver ``message`` to the configured SMTP server or raise MailError.

    Uses STARTTLS when ``smtp_starttls`` is set (and refuses to log in over a
    plain connection otherwise only if the server demands TLS), logs in when
    ``smtp_user`` is set, and uses implicit TLS when the port is 465."""
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    for header in ("From", "To", "Subject"):
        value = message.get(header)
        if value is not None and _CONTROL.search(str(value)):
            raise MailError(f"refusing to send: the {header} header contains control characters")
    try:
        if settings.smtp_port == 465:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.smtp_host, settings.smtp_port, timeout=30, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30)
        with smtp:
            smtp.ehlo()
            if settings.smtp_starttls and settings.smtp_port != 465:
                if not smtp.has_extn("starttls"):
                    raise MailError(f"the SMTP server at {where} does not offer STARTTLS, "
                                    "but notices.smtp_starttls is set")
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if settings.smtp_user:
                smtp.login(settings.smtp_user, settings.smtp_password)
            refused = smtp.send_message(message)
    except MailError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise MailError(f"the SMTP server at {where} refused the login for "
                        f"{settings.smtp_user!r}: {_reply(exc)}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        names = ", ".join(sorted(exc.recipients))
        raise MailError(f"the SMTP server at {where} refused every recipient: {names}") from None
    except smtplib.SMTPException as exc:
        raise MailError(f"the SMTP server at {where} did not accept the message: {_reply(exc)}") from None
    except ssl.SSLError as exc:
        raise MailError(f"TLS with the SMTP server at {where} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise MailError(f"cannot reach the SMTP server at {where}: {exc.strerror or exc}") from None
    if refused:
        # Delivered to the others; raising would wrongly suggest nothing was sent.
        log.warning("the SMTP server at %s refused some recipients: %s", where, ", ".join(sorted(refused)))


def _reply(exc: smtplib.SMTPException) -> str:
    code = getattr(exc, "smtp_code", None)
    text = getattr(exc, "smtp_error", b"")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}".strip() if code else (str(exc) or type(exc).__name__)
