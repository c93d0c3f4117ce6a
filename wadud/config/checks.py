"""The rules that tie settings together, checked once all sources are read."""

from __future__ import annotations

from wadud import origins
from wadud.config import Settings
from wadud.errors import ConfigError


def check(settings: Settings) -> None:
    """Raise :class:`ConfigError` naming the first setting that breaks a rule."""
    if not 0.0 <= settings.otel_sample_ratio <= 1.0:
        raise ConfigError("otel_sample_ratio must be between 0 and 1")
    if settings.otel_endpoint and not settings.otel_endpoint.startswith(("http://", "https://")):
        raise ConfigError("otel_endpoint must be an http:// or https:// URL")
    if settings.log_format not in {"json", "text"}:
        raise ConfigError(f"log_format must be json or text, not {settings.log_format!r}")
    if settings.secret_key and len(settings.secret_key.encode()) < 32:
        # RFC 7518 section 3.2: an HS256 key is at least 256 bits.
        raise ConfigError("secret_key must be at least 32 bytes")
    if bool(settings.turn_tls_cert) != bool(settings.turn_tls_key):
        raise ConfigError("turn tls_cert and tls_key go together: give both or neither")
    if settings.auth_hash_memory_kib < 32:
        # RFC 9106 section 3.1: at least 8 KiB per lane, and wadud.web.auth hashes with 4.
        raise ConfigError("auth_hash_memory_kib must be at least 32")
    if settings.database_pool_min > settings.database_pool_max:
        raise ConfigError("database_pool_min is larger than database_pool_max")
    for origin in settings.call_allowed_origins:
        try:
            if origins.normalise(origin) != origin:
                raise ValueError(f"write it as {origins.normalise(origin)}")
        except ValueError as exc:
            raise ConfigError(f"call_allowed_origins: {exc}") from None
