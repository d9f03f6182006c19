"""The two ways a message leaves siot: SMTP and an HTTP webhook. Blocking stdlib calls, run in a
worker thread by `deliver`.

Why stdlib (smtplib, urllib) and no aiosmtplib/aiohttp: a notification is rare (a rule
transition or a reminder), so a thread per send costs nothing measurable, and the daemon keeps
one dependency fewer to build on a Raspberry Pi. Each function raises `DeliveryFailed`, with
`permanent` set when retrying cannot help (authentication refused, HTTP 4xx other than 429).
"""

from __future__ import annotations

import json
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage

from siot.errors import SiotError
from siot.nodes.notify.config import MsgServiceConfig, SmtpSecurity
from siot.nodes.notify.message import Notification

RETRYABLE_HTTP = frozenset((408, 425, 429))


class DeliveryFailed(SiotError):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def send_email(service: MsgServiceConfig, recipients: list[str], note: Notification) -> None:
    msg = EmailMessage()
    msg["From"] = service.sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = note.subject
    msg.set_content(note.text + "\n")
    try:
        if service.tls is SmtpSecurity.TLS:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                service.host, service.port, timeout=service.timeout_s, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(service.host, service.port, timeout=service.timeout_s)
        with smtp:
            if service.tls is SmtpSecurity.STARTTLS:
                smtp.starttls(context=ssl.create_default_context())
            if service.user:
                smtp.login(service.user, service.password)
            smtp.send_message(msg, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed(f"smtp {service.host}: login refused ({exc.smtp_code})", permanent=True) from exc
    except smtplib.SMTPResponseException as exc:
        permanent = 500 <= exc.smtp_code < 600
        raise DeliveryFailed(
            f"smtp {service.host}: {exc.smtp_code} {exc.smtp_error!r}", permanent=permanent
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryFailed(
            f"smtp {service.host}: recipients refused {sorted(exc.recipients)}", permanent=True
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(f"smtp {service.host}:{service.port}: {exc}", permanent=False) from exc


def post_webhook(service: MsgServiceConfig, note: Notification) -> None:
    body = json.dumps(note.to_json(), default=str).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "siot", **service.header}
    request = urllib.request.Request(service.url, data=body, headers=headers, method=service.method)
    try:
        with urllib.request.urlopen(request, timeout=service.timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        permanent = 400 <= exc.code < 500 and exc.code not in RETRYABLE_HTTP
        raise DeliveryFailed(f"webhook {service.url}: HTTP {exc.code}", permanent=permanent) from exc
    except (OSError, urllib.error.URLError) as exc:
        raise DeliveryFailed(f"webhook {service.url}: {exc}", permanent=False) from exc
