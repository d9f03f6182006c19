"""Typed configs of `msgService` and `user` nodes, decoded from their points.

A msgService's `service` says how it delivers: `smtp` (email to users and fixed recipients) or
`webhook` (one JSON request per notification). Retries and backoff are per service, so a test or
a flaky endpoint can tune them without touching code.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from siot.nodes.config import Duration, NodeConfig

DEFAULT_SMTP_PORT = 587
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_S = 1.0
DEFAULT_TIMEOUT_S = 10.0
# Bounds (docs/limits.md): the first retry's wait, and one attempt's socket timeout.
MAX_BACKOFF_S = 300.0
MAX_TIMEOUT_S = 300.0
Backoff = Duration(0.0, MAX_BACKOFF_S)
AttemptTimeout = Duration(0.0, MAX_TIMEOUT_S, exclusive_min=True)


class ServiceKind(StrEnum):
    SMTP = "smtp"
    WEBHOOK = "webhook"


class SmtpSecurity(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class MsgServiceConfig(NodeConfig):
    description: str = ""
    disabled: bool = False
    service: ServiceKind = ServiceKind.SMTP
    # smtp
    host: str = ""
    port: int = Field(DEFAULT_SMTP_PORT, ge=1, le=65535)
    tls: SmtpSecurity = SmtpSecurity.STARTTLS
    user: str = ""
    password: str = ""
    sender: str = Field("", alias="from")
    to: dict[str, str] = Field(default_factory=dict)  # fixed recipients, one per key
    # webhook
    url: str = ""
    method: str = "POST"
    header: dict[str, str] = Field(default_factory=dict)  # key = header name
    # delivery
    retries: int = Field(DEFAULT_RETRIES, ge=0, le=20)
    backoff_s: Backoff = Field(DEFAULT_BACKOFF_S, alias="backoff")
    timeout_s: AttemptTimeout = Field(DEFAULT_TIMEOUT_S, alias="timeout")

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_bool(cls, v: object) -> object:
        """Accept a plain on/off for `tls`: on = implicit TLS, off = STARTTLS is not forced."""
        if isinstance(v, bool):
            return SmtpSecurity.TLS if v else SmtpSecurity.NONE
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        method = v.upper()
        if method not in ("POST", "PUT", "PATCH"):
            raise ValueError(f"method '{v}' must be POST, PUT or PATCH")
        return method

    @model_validator(mode="after")
    def _complete(self) -> MsgServiceConfig:
        if self.service is ServiceKind.SMTP and not (self.host and self.sender):
            raise ValueError("an smtp service needs host and from")
        if self.service is ServiceKind.WEBHOOK and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url '{self.url}' must start with http:// or https://")
        return self


class UserConfig(NodeConfig):
    first_name: str = Field("", alias="firstName")
    last_name: str = Field("", alias="lastName")
    email: str = ""
