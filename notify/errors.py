"""Typed errors of the notify package, under :class:`wadud.errors.WadudError`."""

from __future__ import annotations

from wadud.errors import BadRequest, NotFound, WadudError

__all__ = [
    "DeliveryFailed",
    "DeviceNotFound",
    "InvalidPreferences",
    "NotifyError",
    "PermanentFailure",
]


class NotifyError(WadudError):
    """Root of the notify package's errors (bare: our fault, 500)."""

    code = "notify-error"
    title = "Notification error"


class InvalidPreferences(NotifyError, BadRequest):
    """Preferences or contact details that cannot be used (unknown time zone,
    quiet hours with one end only)."""

    code = "invalid-notification-preferences"
    title = "Invalid notification preferences"


class DeviceNotFound(NotifyError, NotFound):
    code = "device-not-found"
    title = "No such device"


class DeliveryFailed(NotifyError):
    """A send that failed and may succeed later (timeout, 5xx, 429): retried
    with backoff. ``retry_after``: seconds the service asked us to wait."""

    code = "delivery-failed"
    title = "Delivery failed"

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class PermanentFailure(DeliveryFailed):
    """A send that will never succeed (unknown device token, bad address):
    not retried. ``drop_device``: the device is gone and is forgotten."""

    code = "delivery-refused"
    title = "Delivery refused"

    def __init__(self, detail: str, *, drop_device: bool = False) -> None:
        super().__init__(detail)
        self.drop_device = drop_device
