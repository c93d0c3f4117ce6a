"""Errors of the webhooks feature; each carries its HTTP status."""

from __future__ import annotations

from wadud.errors import NotFound, Unprocessable, WadudError


class HooksError(WadudError):
    """Root of hooks/ errors."""


class RefusedAddress(HooksError, Unprocessable, OSError):
    """An endpoint URL is malformed, or reaches a private, loopback,
    link-local or otherwise reserved address (on save: 422; on delivery: the
    attempt fails, its detail says why). Also an OSError, so aiohttp's
    connector treats a refusal from the resolver as a connection failure."""

    code = "webhook-address-refused"
    title = "Webhook endpoint address refused"


class EndpointNotFound(HooksError, NotFound):
    code = "webhook-endpoint-not-found"
    title = "No such webhook endpoint"


class DeliveryNotFound(HooksError, NotFound):
    code = "webhook-delivery-not-found"
    title = "No such webhook delivery"
