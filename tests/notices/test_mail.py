"""notices.mail against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from config.settings import NoticeSettings
from notices.errors import MailError
from notices.mail import build_message, safe_header, send_email

from .conftest import SmtpServer, _free_port


def _settings(server: SmtpServer, **kw: object) -> NoticeSettings:
    return NoticeSettings(smtp_host=server.host, smtp_port=server.port,
                          from_address="notices@artwatch.test", **kw)  # type: ignore[arg-type]


def _parse(raw: bytes | str) -> EmailMessage:
    data = raw if isinstance(raw, bytes) else raw.encode()
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_safe_header_strips_controls_and_newlines() -> None:
    evil = "Nice\r\nBcc: victim@example.com\x00\x1b[31m\u202eevil\u2028x"
    out = safe_header(evil)
    assert "\n" not in out and "\r" not in out and "\x00" not in out and "\u202e" not in out
    assert out == "Nice Bcc: victim@example.com [31m evil x"
    assert safe_header("a" * 2000, 50) == "a" * 50


def test_message_with_text_html_and_attachment_arrives_intact(smtp_server: SmtpServer) -> None:
    settings = _settings(smtp_server)
    msg = build_message(
        settings, "agent@host.test", "DMCA notice\r\nBcc: x@evil.test", "plain body ✓",
        html="<p>html body</p>", attachments=[("evidence.zip", b"PK\x03\x04zipbytes", "application/zip")],
        reply_to="owner@example.com",
    )
    send_email(settings, msg)
    [env] = smtp_server.box.envelopes
    assert env.mail_from == "notices@artwatch.test"
    assert env.rcpt_tos == ["agent@host.test"]
    got = _parse(env.content)  # type: ignore[arg-type]
    assert got["Subject"] == "DMCA notice Bcc: x@evil.test"
    assert got["Bcc"] is None
    assert got["Reply-To"] == "owner@example.com"
    assert got["Message-ID"].endswith("@artwatch.test>")
    assert got.get_content_type() == "multipart/mixed"
    body = got.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "plain body ✓"
    html = got.get_body(("html",))
    assert html is not None and "<p>html body</p>" in html.get_content()
    [att] = list(got.iter_attachments())
    assert att.get_filename() == "evidence.zip"
    assert att.get_content_type() == "application/zip"
    assert att.get_content() == b"PK\x03\x04zipbytes"


def test_login_when_user_is_configured(smtp_server: SmtpServer) -> None:
    settings = _settings(smtp_server, smtp_user="sender", smtp_password="s3cret")
    send_email(settings, build_message(settings, "a@b.test", "s", "t"))
    assert smtp_server.box.logins == [("sender", "s3cret")]
    assert len(smtp_server.box.envelopes) == 1


def test_wrong_password_is_a_clear_error(smtp_server: SmtpServer) -> None:
    settings = _settings(smtp_server, smtp_user="sender", smtp_password="wrong")
    with pytest.raises(MailError, match="refused the login for 'sender'"):
        send_email(settings, build_message(settings, "a@b.test", "s", "t"))
    assert smtp_server.box.envelopes == []


def test_starttls_required_but_not_offered(smtp_server: SmtpServer) -> None:
    settings = _settings(smtp_server, smtp_starttls=True)
    with pytest.raises(MailError, match="does not offer STARTTLS"):
        send_email(settings, build_message(settings, "a@b.test", "s", "t"))


def test_refused_recipient(smtp_server: SmtpServer) -> None:
    smtp_server.box.refuse.add("gone@b.test")
    settings = _settings(smtp_server)
    with pytest.raises(MailError, match=r"refused every recipient: gone@b\.test"):
        send_email(settings, build_message(settings, "gone@b.test", "s", "t"))
    send_email(settings, build_message(settings, ["gone@b.test", "ok@b.test"], "s", "t"))
    assert smtp_server.box.envelopes[-1].rcpt_tos == ["ok@b.test"]


def test_unreachable_server_is_a_clear_error() -> None:
    settings = NoticeSettings(smtp_host="127.0.0.1", smtp_port=_free_port())
    with pytest.raises(MailError, match=r"cannot reach the SMTP server at 127\.0\.0\.1:\d+"):
        send_email(settings, build_message(settings, "a@b.test", "s", "t"))


DATA = Path(__file__).with_name("data")
# A self-signed certificate for 127.0.0.1 valid until 2126, made for these tests with:
# openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout smtp-test-key.pem
#   -out smtp-test-cert.pem -days 36500 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1
#   -addext basicConstraints=critical,CA:TRUE
CERT, KEY = str(DATA / "smtp-test-cert.pem"), str(DATA / "smtp-test-key.pem")


def test_starttls_then_login(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that requires STARTTLS before AUTH; the client trusts its certificate
    through SSL_CERT_FILE, as an operator would for a private CA."""
    import ssl

    from aiosmtpd.controller import Controller

    from .conftest import Mailbox, _authenticator

    cert, key = CERT, KEY
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    box = Mailbox()
    port = _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, tls_context=server_ctx, require_starttls=True,
                            authenticator=_authenticator(box), auth_exclude_mechanism=["LOGIN"])
    controller.start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", cert)
        plain = NoticeSettings(smtp_host="127.0.0.1", smtp_port=port, from_address="n@artwatch.test")
        with pytest.raises(MailError, match="did not accept the message"):
            send_email(plain, build_message(plain, "a@b.test", "s", "t"))
        tls = NoticeSettings(smtp_host="127.0.0.1", smtp_port=port, from_address="n@artwatch.test",
                             smtp_starttls=True, smtp_user="sender", smtp_password="s3cret")
        send_email(tls, build_message(tls, "a@b.test", "over tls", "t"))
        assert box.logins == [("sender", "s3cret")]
        assert _parse(box.envelopes[0].content)["Subject"] == "over tls"  # type: ignore[arg-type]
        monkeypatch.delenv("SSL_CERT_FILE")
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
        with pytest.raises(MailError, match=r"TLS with the SMTP server at 127\.0\.0\.1:.* failed"):
            send_email(tls, build_message(tls, "a@b.test", "s", "t"))
    finally:
        controller.stop()
