"""Notifications: msgService nodes (SMTP, webhook) and user nodes, used by rules' notify actions."""

from siot.nodes.notify.config import MsgServiceConfig, ServiceKind, SmtpSecurity, UserConfig
from siot.nodes.notify.deliver import DeliveryResult, deliver
from siot.nodes.notify.message import Notification
from siot.nodes.notify.notifier import Notifier, find_upward
from siot.nodes.notify.transports import DeliveryFailed

__all__ = [
    "DeliveryFailed",
    "DeliveryResult",
    "MsgServiceConfig",
    "Notification",
    "Notifier",
    "ServiceKind",
    "SmtpSecurity",
    "UserConfig",
    "deliver",
    "find_upward",
]
