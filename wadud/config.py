"""Settings: one frozen dataclass, filled from defaults, a TOML file, the
environment and command-line flags, in that order of precedence.

Every field is documented in ``docs/configuration.md``; a test keeps the two in
step. Names map mechanically so there is nothing to remember:

* field ``database_url``
* environment ``WADUD_DATABASE_URL``
* TOML ``database_url = ...`` at top level, or ``url = ...`` under ``[database]``
  (a section name and key are joined with ``_``).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wadud.errors import ConfigError

ENV_PREFIX = "WADUD_"
# Variables with the prefix that are not settings: the configuration file,
# and WADUD_NATIVE=0, read at import by the native hot loops (setup.py) to
# keep the pure-Python ones.
NOT_SETTINGS = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "NATIVE"})


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    # [server]
    host: str = field(default="127.0.0.1", metadata=_doc("Address the HTTP server binds."))
    port: int = field(default=8080, metadata=_doc("TCP port of the HTTP server."))
    public_url: str = field(
        default="",
        metadata=_doc(
            "Base URL users reach this server at (links in emails, checkout redirects, join"
            " links). Empty: http://HOST:PORT."
        ),
    )
    trusted_proxies: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Addresses or networks of the load balancers or reverse proxies in front"
            " of the API, comma separated. A request from one of them is counted"
            " (rate limits, logs) as coming from the right-most address in"
            " X-Forwarded-For that is not one of them. Empty: the TCP peer is the client."
        ),
    )
    data_dir: Path = field(
        default=Path("var"),
        metadata=_doc(
            "Folder for local state: the embedded PostgreSQL cluster, the generated secret"
            " key, uploaded files."
        ),
    )
    secret_key: str = field(
        default="",
        metadata=_doc(
            "Key that signs access and room tokens (HS256). Empty: generated once and kept in"
            " DATA_DIR/secret_key (fine for `wadud serve`; `wadud api` replicas must share one)."
        ),
    )
    max_body_bytes: int = field(
        default=1_048_576, metadata=_doc("Largest request body accepted; larger gets 413.")
    )
    shutdown_timeout: float = field(
        default=10.0,
        metadata=_doc("Seconds in-flight requests get to finish after SIGTERM."),
    )
    log_level: str = field(default="info", metadata=_doc("debug, info, warning or error."))
    log_format: str = field(
        default="json", metadata=_doc("json (one object per line) or text (for a terminal).")
    )
    otel_endpoint: str = field(
        default="",
        metadata=_doc(
            "OpenTelemetry: base URL of an OTLP/HTTP collector (e.g. http://otel:4318) that"
            " receives traces of requests, SQL, the outbox and the bus. Empty: tracing off."
        ),
    )
    otel_service_name: str = field(
        default="wadud", metadata=_doc("OpenTelemetry service.name of this process's spans.")
    )
    otel_sample_ratio: float = field(
        default=1.0,
        metadata=_doc(
            "Share of new traces kept, 0 to 1; a request that arrives with a sampled"
            " traceparent is always kept."
        ),
    )
    metrics_listen: str = field(
        default="",
        metadata=_doc(
            "ADDR:PORT of a listener of its own that serves Prometheus /metrics, e.g."
            " 127.0.0.1:9100. Empty: no metrics. The public port never serves /metrics."
        ),
    )
    metrics_token: str = field(
        default="",
        metadata=_doc(
            "When set, the metrics listener answers only `Authorization: Bearer TOKEN`"
            " (401 otherwise); for a listener other hosts can reach."
        ),
    )
    # [database]
    database_url: str = field(
        default="",
        metadata=_doc(
            "PostgreSQL URL (postgresql://user:pass@host:port/db). Empty: an embedded"
            " PostgreSQL 16 under DATA_DIR/postgres, started and stopped with the server."
        ),
    )
    database_pool_min: int = field(default=2, metadata=_doc("Connections kept open."))
    database_pool_max: int = field(default=20, metadata=_doc("Most connections at once."))
    database_migrate: bool = field(
        default=True,
        metadata=_doc(
            "Apply pending migrations at start (under an advisory lock). Off: run"
            " `wadud migrate` yourself before starting."
        ),
    )
    # [redis]
    redis_url: str = field(
        default="",
        metadata=_doc(
            "Redis URL for the bus (pub/sub and streams). Empty: an in-process bus, which"
            " only works when everything runs in one process (`wadud serve`)."
        ),
    )
    # [auth]
    auth_access_ttl: int = field(default=900, metadata=_doc("Access token lifetime, seconds."))
    auth_refresh_ttl: int = field(
        default=30 * 86400, metadata=_doc("Refresh token lifetime, seconds.")
    )
    auth_issuer: str = field(default="wadud", metadata=_doc("`iss` claim of issued tokens."))
    auth_hash_concurrency: int = field(
        default=2,
        metadata=_doc(
            "Password hashes (argon2id, 64 MiB each) computed at once, in threads of"
            " their own at low CPU priority; more wait their turn."
        ),
    )
    auth_hash_wait: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds a sign-in waits for a hashing slot before it is refused with 503"
            " and Retry-After."
        ),
    )
    auth_hash_memory_kib: int = field(
        default=65536,
        metadata=_doc(
            "Memory of one argon2id password hash, KiB (time cost 3, 4 lanes). The"
            " default, 64 MiB, is RFC 9106's second recommended option; lower it"
            " only on a host that cannot spare it. Hashes made under another value"
            " still verify (each hash carries its parameters)."
        ),
    )
    auth_totp_admins: bool = field(
        default=False,
        metadata=_doc(
            "Admins must sign in with a TOTP code (RFC 6238) besides their password."
            " Doctors and staff: per clinic (PUT /api/v1/clinics/{id}/totp)."
        ),
    )
    auth_totp_issuer: str = field(
        default="Wadud",
        metadata=_doc("Issuer name authenticator apps show beside a TOTP enrolment."),
    )
    # [limits]  (docs/security.md, "Rate limits"; shared by replicas through Redis)
    limits_login_account_free: int = field(
        default=5,
        metadata=_doc(
            "Failed sign-ins to one account before each further one must wait (429 with"
            " Retry-After); the wait doubles from LIMITS_LOGIN_DELAY. 0: no limit."
        ),
    )
    limits_login_address_free: int = field(
        default=30,
        metadata=_doc(
            "Failed sign-ins from one client address (any account) before each further"
            " one must wait, as for an account. 0: no limit."
        ),
    )
    limits_login_delay: float = field(
        default=1.0, metadata=_doc("First wait, seconds, once the free sign-in failures are spent.")
    )
    limits_login_delay_max: float = field(
        default=900.0, metadata=_doc("Longest wait between sign-in attempts, seconds.")
    )
    limits_login_forget: float = field(
        default=3600.0,
        metadata=_doc("Seconds after the last failed sign-in that the failures are forgotten."),
    )
    limits_anonymous_burst: int = field(
        default=10,
        metadata=_doc("Anonymous sessions one client address may start at once. 0: no limit."),
    )
    limits_anonymous_per_hour: float = field(
        default=60.0,
        metadata=_doc("Anonymous sessions per hour and client address once the burst is spent."),
    )
    limits_register_burst: int = field(
        default=10,
        metadata=_doc("Registrations one client address may make at once. 0: no limit."),
    )
    limits_register_per_hour: float = field(
        default=30.0,
        metadata=_doc("Registrations per hour and client address once the burst is spent."),
    )
    limits_check_burst: int = field(
        default=10,
        metadata=_doc(
            "Pre-call checks (POST /api/v1/check) one client address may start at once."
            " 0: no limit."
        ),
    )
    limits_check_per_hour: float = field(
        default=60.0,
        metadata=_doc("Pre-call checks per hour and client address once the burst is spent."),
    )
    # [outbox]
    outbox_batch: int = field(default=200, metadata=_doc("Events relayed per round."))
    outbox_poll_interval: float = field(
        default=1.0,
        metadata=_doc("Seconds between outbox polls, for events no wake-up announced."),
    )
    outbox_retention: float = field(
        default=86400.0, metadata=_doc("Seconds published outbox rows are kept.")
    )
    # [booking]
    booking_hold_minutes: int = field(
        default=10, metadata=_doc("How long a held slot waits for payment before it lapses.")
    )
    booking_search_page_max: int = field(
        default=100, metadata=_doc("Largest page size of doctor search.")
    )
    booking_upload_max_bytes: int = field(
        default=10 * 1_048_576, metadata=_doc("Largest credential document upload.")
    )
    # [payments]
    payments_default_gateway: str = field(
        default="sandbox", metadata=_doc("Gateway used when a payment names none.")
    )
    payments_sandbox_secret: str = field(
        default="",
        metadata=_doc("Signs sandbox checkout callbacks. Empty: derived from SECRET_KEY."),
    )
    payments_platform_commission_bp: int = field(
        default=1500,
        metadata=_doc("Platform commission in basis points (1500 = 15%) when a clinic sets none."),
    )
    payments_jazzcash_merchant_id: str = field(default="", metadata=_doc("JazzCash merchant id."))
    payments_jazzcash_password: str = field(default="", metadata=_doc("JazzCash password."))
    payments_jazzcash_integrity_salt: str = field(
        default="", metadata=_doc("JazzCash integrity salt (the secure-hash key).")
    )
    payments_jazzcash_endpoint: str = field(
        default="", metadata=_doc("JazzCash API base URL (sandbox or live).")
    )
    payments_card_api_base: str = field(default="", metadata=_doc("Card gateway API base URL."))
    payments_card_api_key: str = field(default="", metadata=_doc("Card gateway API key."))
    payments_card_webhook_secrets: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Card gateway webhook signing secrets, comma separated; all verify, so a secret"
            " can rotate without dropping events."
        ),
    )
    payments_easypaisa_store_id: str = field(
        default="",
        metadata=_doc(
            "EasyPaisa store id. Empty: EasyPaisa is offered through the built-in simulator"
            " (see PAYMENTS_EASYPAISA_SIMULATOR)."
        ),
    )
    payments_easypaisa_hash_key: str = field(
        default="",
        metadata=_doc("EasyPaisa hash key from the merchant portal (16, 24 or 32 characters)."),
    )
    payments_easypaisa_username: str = field(
        default="", metadata=_doc("EasyPaisa Open API username (the Credentials header).")
    )
    payments_easypaisa_password: str = field(
        default="", metadata=_doc("EasyPaisa Open API password.")
    )
    payments_easypaisa_account_num: str = field(
        default="", metadata=_doc("The merchant's EasyPaisa account number (sent on inquiries).")
    )
    payments_easypaisa_endpoint: str = field(
        default="",
        metadata=_doc(
            "EasyPaisa base URL. Empty: production, https://easypay.easypaisa.com.pk (staging:"
            " https://easypaystg.easypaisa.com.pk)."
        ),
    )
    payments_easypaisa_simulator: bool = field(
        default=True,
        metadata=_doc(
            "With no EasyPaisa store configured, offer the easypaisa and easypaisa_ma gateways"
            " through the built-in simulator at /easypaisa-sim (no money moves). Turn off in"
            " production."
        ),
    )
    payments_easypaisa_inquiry_interval: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds between EasyPaisa inquiry rounds, which settle payments whose IPN never"
            " came (one replica runs each round, under an advisory lock). 0: no rounds."
        ),
    )
    payments_webhook_tolerance: int = field(
        default=300, metadata=_doc("Oldest webhook signature timestamp accepted, seconds.")
    )
    payments_bank_transfer_hold_hours: float = field(
        default=24.0,
        metadata=_doc(
            "How long a booking paid by bank transfer stays held for the transfer to arrive"
            " (never past the slot's start)."
        ),
    )
    payments_bank_transfer_bank_name: str = field(
        default="", metadata=_doc("Bank transfer: the platform's bank, shown to patients.")
    )
    payments_bank_transfer_account_title: str = field(
        default="", metadata=_doc("Bank transfer: the platform's account title.")
    )
    payments_bank_transfer_account_number: str = field(
        default="", metadata=_doc("Bank transfer: the platform's account number.")
    )
    payments_bank_transfer_iban: str = field(
        default="",
        metadata=_doc(
            "Bank transfer: the platform's IBAN. Bank transfer is offered when this or the"
            " account number is set."
        ),
    )
    payments_bank_transfer_proof_max_bytes: int = field(
        default=5 * 1_048_576,
        metadata=_doc("Largest proof of payment (image or PDF) a patient may upload."),
    )
    payments_bank_transfer_statement_max_bytes: int = field(
        default=2 * 1_048_576, metadata=_doc("Largest CSV bank statement finance staff may import.")
    )
    # [chat]
    chat_max_body_bytes: int = field(
        default=8192,
        metadata=_doc("Largest chat message body, in bytes of UTF-8; larger is refused."),
    )
    chat_rate_per_second: float = field(
        default=5.0,
        metadata=_doc("Chat messages a user may send per second (sustained), per API node."),
    )
    chat_rate_burst: int = field(
        default=30,
        metadata=_doc("Chat messages a user may send in a burst before the rate applies."),
    )
    chat_attachment_max_bytes: int = field(
        default=10 * 1_048_576, metadata=_doc("Largest chat attachment (image or PDF) upload.")
    )
    chat_attachment_url_ttl: int = field(
        default=300, metadata=_doc("Lifetime of a signed chat attachment URL, seconds.")
    )
    chat_encryption_keys: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Chat encryption keys at rest as KID:KEY (KEY: 32 bytes, urlsafe base64), comma"
            " separated; the first encrypts, all decrypt, so a key can rotate. Empty: one key"
            " derived from SECRET_KEY."
        ),
    )
    chat_reconcile_interval: float = field(
        default=1.0,
        metadata=_doc(
            "Seconds between checks of PostgreSQL for chat events the bus did not deliver"
            " (lost pub/sub messages, a Redis restart)."
        ),
    )
    chat_typing_interval: float = field(
        default=2.0, metadata=_doc("Least seconds between two relayed typing indicators of a user.")
    )
    chat_client_queue_max: int = field(
        default=5000,
        metadata=_doc(
            "Chat frames queued for one slow WebSocket client before it is disconnected"
            " (it resumes from its last sequence)."
        ),
    )
    # [consent]  (docs/privacy.md)
    consent_required: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Consent purposes a patient must have accepted to book and to join a"
            " booking's call, comma separated (telehealth_consultation, data_processing,"
            " call_recording, marketing). Empty: none required."
        ),
    )
    consent_required_regions: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Per-region overrides of consent_required as REGION:purpose+purpose, comma"
            " separated, e.g. AE:telehealth_consultation+data_processing+call_recording."
            " REGION: with nothing after it requires nothing there."
        ),
    )
    # [privacy]  (docs/privacy.md, "Erasure")
    privacy_erasure_confirm_seconds: int = field(
        default=900,
        metadata=_doc(
            "Seconds a patient's erasure confirmation token stays valid between the"
            " request and the confirmation."
        ),
    )
    # [retention]  (docs/privacy.md, "Retention"; 0 days: kept until erased)
    retention_interval: float = field(
        default=3600.0,
        metadata=_doc(
            "Seconds between retention rounds inside `wadud serve` and `wadud api` (one"
            " replica runs each round, under an advisory lock). 0: no scheduled rounds;"
            " run `wadud retention run` yourself."
        ),
    )
    retention_batch: int = field(
        default=1000, metadata=_doc("Rows one retention delete statement removes at most.")
    )
    retention_chat_days: int = field(
        default=0,
        metadata=_doc(
            "Days a consultation conversation is kept after its last message; then it is"
            " deleted whole (messages, attachments). 0: kept until the patient is erased."
        ),
    )
    retention_expired_holds_days: int = field(
        default=30, metadata=_doc("Days an unpaid, lapsed booking hold is kept.")
    )
    retention_webhook_days: int = field(
        default=180,
        metadata=_doc("Days payment gateways' webhook payloads (the deduplication log) are kept."),
    )
    retention_notify_days: int = field(
        default=90,
        metadata=_doc(
            "Days the notification log (finished jobs, their deliveries and attempts) is kept."
        ),
    )
    retention_call_report_days: int = field(
        default=90,
        metadata=_doc(
            "Days a visit's call report (quality samples, transport events) is kept after"
            ' the call ended (docs/calls.md, "Call reports"). 0: kept until erased.'
        ),
    )
    retention_sessions_days: int = field(
        default=30,
        metadata=_doc(
            "Days ended sign-in sessions (revoked, or expired) and their tokens are kept."
        ),
    )
    # [storage]
    storage_backend: str = field(
        default="local",
        metadata=_doc("Where uploaded files live: local (DATA_DIR/uploads) or s3."),
    )
    storage_s3_endpoint: str = field(
        default="",
        metadata=_doc("S3-compatible endpoint URL (MinIO, ...). Empty: AWS S3 of S3_REGION."),
    )
    storage_s3_bucket: str = field(default="", metadata=_doc("S3 bucket for uploaded files."))
    storage_s3_region: str = field(default="us-east-1", metadata=_doc("S3 region."))
    storage_s3_access_key: str = field(default="", metadata=_doc("S3 access key id."))
    storage_s3_secret_key: str = field(default="", metadata=_doc("S3 secret access key."))

    # [turn]  (the relay's own keys, e.g. listen_udp or relay_ips, are read
    # from the same table by `wadud turn`; see docs/turn.md)
    turn_secrets: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Shared secrets of the TURN relay's REST credentials (coturn use-auth-secret),"
            " comma separated; the first signs, all verify. The API and `wadud turn` read the"
            " same key. Empty in `wadud serve`: its own relay generates one."
        ),
    )
    turn_urls: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "TURN URLs handed to clients with their credentials, e.g."
            " turn:turn.example.com:3478?transport=udp. Empty in `wadud serve`: the"
            " embedded relay's."
        ),
    )
    turn_credential_ttl: int = field(
        default=14_400,
        metadata=_doc("Lifetime of TURN credentials handed to users, seconds."),
    )
    turn_credentials_burst: int = field(
        default=20,
        metadata=_doc("TURN credentials one user may fetch at once. 0: no limit."),
    )
    turn_credentials_per_hour: float = field(
        default=120.0,
        metadata=_doc("TURN credentials per hour and user once the burst is spent."),
    )
    turn_embedded: bool = field(
        default=True,
        metadata=_doc("`wadud serve` only: run a TURN relay on 127.0.0.1 in the same process."),
    )
    turn_embedded_port: int = field(
        default=3478,
        metadata=_doc(
            "Port of the embedded relay (UDP and TCP); when taken, a free port is used instead."
        ),
    )
    turn_embedded_tls_port: int = field(
        default=5349,
        metadata=_doc(
            "Port of the embedded relay's TLS listener (turns:); when taken, a free port is"
            " used instead. Its certificate is turn_tls_cert, else a self-signed one kept"
            " in DATA_DIR/turn-tls, which a browser refuses until it is trusted there."
        ),
    )
    turn_tls_cert: str = field(
        default="",
        metadata=_doc(
            "PEM certificate chain of the relay's TLS listener (turns:), for `wadud turn`"
            " and `wadud serve`'s relay alike. It must name the host of the turns: URLs."
        ),
    )
    turn_tls_key: str = field(
        default="",
        metadata=_doc("PEM private key of turn_tls_cert."),
    )
    media_host: str = field(
        default="127.0.0.1",
        metadata=_doc("Address the media worker's UDP socket binds (0.0.0.0 on a media node)."),
    )
    media_port: int = field(
        default=40000,
        metadata=_doc(
            "UDP port of the media worker, shared by every peer (ICE-lite). In `wadud serve`,"
            " when taken, a free port is used instead."
        ),
    )
    media_announced_addresses: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Addresses put in the worker's ICE candidates, comma separated, when peers"
            " reach it at another address than it binds (NAT, cloud public IPs)."
            " Empty: the bind address."
        ),
    )
    media_consent_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds without a peer's ICE consent checks (RFC 7675) before its transport is closed."
        ),
    )
    media_remb_max_bitrate: int = field(
        default=2_500_000,
        metadata=_doc(
            "Most bits per second the media worker's REMB lets a publisher without"
            " transport-cc send (its bandwidth estimate is capped here)."
        ),
    )
    media_simulcast: bool = field(
        default=True,
        metadata=_doc(
            "Accept publishers' simulcast (RFC 8853: three VP8 layers from a browser"
            " capturing 720p) and send each subscriber the layer its bandwidth and"
            " tile size call for, pausing video when even the lowest layer does not"
            " fit (audio goes on). Off: a simulcast offer is answered with one layer."
        ),
    )
    media_red: bool = field(
        default=True,
        metadata=_doc(
            "Negotiate Opus RED (RFC 2198, redundant audio as Chrome and Firefox offer it):"
            " publishers send each audio frame again in the next packets, which subscribers"
            " that accept RED use to fill losses; subscribers that do not (aiortc, older"
            " Safari) get plain Opus. Off: audio is plain Opus (with in-band FEC) for everyone."
        ),
    )
    media_workers: int = field(
        default=0,
        metadata=_doc(
            "Worker processes of `wadud media`, each owning one UDP port (media_port,"
            " media_port+1, ...). 0: one per core."
        ),
    )
    media_http: str = field(
        default="127.0.0.1:9300",
        metadata=_doc(
            "ADDR:PORT where `wadud media` serves /healthz, /readyz and /metrics"
            " (every worker's sfu_* metrics, labelled by worker)."
        ),
    )
    media_node_id: str = field(
        default="",
        metadata=_doc(
            "Name of this media node in the registry. Empty: the host name and a short"
            " random suffix."
        ),
    )
    media_capacity: int = field(
        default=400,
        metadata=_doc(
            "Transports one worker takes before placement passes it over for new rooms"
            " (each participant has up to two)."
        ),
    )
    media_heartbeat: float = field(
        default=1.0,
        metadata=_doc("Seconds between a media worker's registry updates (load, state)."),
    )
    media_worker_ttl: float = field(
        default=3.0,
        metadata=_doc(
            "Seconds a media worker's registry entry lives without a heartbeat; after"
            " that it counts as dead and its rooms are placed elsewhere."
        ),
    )
    media_rpc_timeout: float = field(
        default=5.0,
        metadata=_doc(
            "Seconds signalling waits for a media worker's reply over Redis before the"
            " call fails as media-unavailable."
        ),
    )
    media_drain_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds a draining media node (SIGTERM) waits for its rooms to move"
            " before its workers stop anyway."
        ),
    )
    media_start_retries: int = field(
        default=5,
        metadata=_doc(
            "Times in a row a `wadud media` worker may fail to start the same way (its"
            " UDP port taken, ...) before the node counts it as failed: /readyz answers"
            " 503 naming the reason, and once every worker has failed the node exits 1"
            " for its supervisor (systemd, Kubernetes) to see. Restarts go on meanwhile;"
            " a worker that cannot reach Redis is restarted without being counted."
        ),
    )
    media_restart_backoff: float = field(
        default=0.5,
        metadata=_doc(
            "Seconds before a `wadud media` worker that keeps dying is restarted the"
            " second time; each later restart waits twice as long, up to"
            " media_restart_backoff_max. The first restart is at once."
        ),
    )
    media_restart_backoff_max: float = field(
        default=30.0,
        metadata=_doc("Longest wait before a `wadud media` worker that keeps dying is restarted."),
    )
    region: str = field(
        default="",
        metadata=_doc(
            "Region of this process: a `wadud api` replica places rooms of tokens"
            " without a region claim there; a `wadud media` node registers its"
            " workers under it. Empty: no region (any worker)."
        ),
    )
    media_region_distances: str = field(
        default="",
        metadata=_doc(
            "How far regions are apart, as `A-B=N` pairs separated by commas"
            " (e.g. `pk-ae=40,pk-sa=60,ae-sa=30`, one-way milliseconds): a region"
            " with no live media worker has its participants placed in the nearest"
            " region that has one. Unlisted pairs count as farthest."
        ),
    )
    call_owner_lease: float = field(
        default=3.0,
        metadata=_doc(
            "Seconds an API replica's ownership of a call room lives without renewal;"
            " when the owner dies another replica takes the room over after this."
        ),
    )
    call_resume_grace: float = field(
        default=20.0,
        metadata=_doc(
            "Seconds a participant whose WebSocket dropped stays in the room, media"
            " flowing, waiting to resume."
        ),
    )
    call_ping_interval: float = field(
        default=15.0,
        metadata=_doc("Seconds between the server's pings on call WebSockets."),
    )
    call_max_frame_bytes: int = field(
        default=65_536,
        metadata=_doc("Largest signalling frame read; a bigger one closes the socket (1009)."),
    )
    call_max_participants: int = field(
        default=16, metadata=_doc("Most participants (waiting included) in one room.")
    )
    call_frame_ancestors: str = field(
        default="*",
        metadata=_doc(
            "Who may put the call page in an iframe: a CSP frame-ancestors source list,"
            " e.g. `https://clinic.example https://*.clinic.example`. `*`: any site."
        ),
    )
    call_demo: bool = field(
        default=False,
        metadata=_doc(
            "Serve /demo, which creates a demo room and hands out doctor and patient links"
            " to anyone. `wadud serve` turns it on; never on a public deployment."
        ),
    )
    # [notify]: notifications (notify/, docs/notifications.md)
    notify_in_serve: bool = field(
        default=True,
        metadata=_doc(
            "Run the notifier inside `wadud serve`. Deployments of `wadud api` run"
            " `wadud notify` (one or more replicas) instead."
        ),
    )
    notify_poll_interval: float = field(
        default=1.0,
        metadata=_doc(
            "Seconds between the notifier's looks for new events, due jobs and due"
            " deliveries (it also wakes on the NOTIFY a relay sends after each published batch)."
        ),
    )
    notify_concurrency: int = field(
        default=4, metadata=_doc("Deliveries one notifier sends at once.")
    )
    notify_max_attempts: int = field(
        default=8,
        metadata=_doc("Tries of one delivery before it is logged as failed for good."),
    )
    notify_backoff_base: float = field(
        default=30.0,
        metadata=_doc("Seconds before the first retry; each later retry waits twice as long."),
    )
    notify_backoff_max: float = field(
        default=3600.0, metadata=_doc("Longest wait between two tries of a delivery.")
    )
    notify_send_timeout: float = field(
        default=20.0, metadata=_doc("Seconds one send (SMTP, push, webhook) may take.")
    )
    notify_reminder_minutes: list[str] = field(
        default_factory=lambda: ["1440", "15"],
        metadata=_doc(
            "Reminders before a booking's start, in minutes, comma separated."
            ' 360 or more use the "upcoming consultation" wording.'
        ),
    )
    notify_chat_delay: float = field(
        default=120.0,
        metadata=_doc(
            "Seconds a chat message may stay unread before its recipient is notified"
            " (someone online reads it sooner, and hears nothing)."
        ),
    )
    notify_email_from: str = field(
        default="Wadud <no-reply@localhost>", metadata=_doc("From address of emails.")
    )
    notify_smtp_host: str = field(
        default="", metadata=_doc("SMTP server for email. Empty: no email.")
    )
    notify_smtp_port: int = field(default=587, metadata=_doc("SMTP server port."))
    notify_smtp_tls: str = field(
        default="starttls",
        metadata=_doc("starttls (port 587), tls (implicit TLS, port 465) or none (local relay)."),
    )
    notify_smtp_username: str = field(default="", metadata=_doc("SMTP user name, if any."))
    notify_smtp_password: str = field(default="", metadata=_doc("SMTP password, if any."))
    notify_vapid_private_key: str = field(
        default="",
        metadata=_doc(
            "Web push VAPID private key (base64url raw P-256 key or PEM). Empty: no web push."
        ),
    )
    notify_vapid_subject: str = field(
        default="",
        metadata=_doc("VAPID contact (`mailto:ops@example.com` or an https URL)."),
    )
    notify_fcm_service_account: str = field(
        default="",
        metadata=_doc("Path of the Firebase service account JSON file. Empty: no FCM."),
    )
    notify_fcm_url: str = field(
        default="https://fcm.googleapis.com", metadata=_doc("FCM HTTP v1 API base URL.")
    )
    notify_apns_key_file: str = field(
        default="", metadata=_doc("Path of the APNs auth key (.p8). Empty: no APNs.")
    )
    notify_apns_key_id: str = field(default="", metadata=_doc("APNs auth key id (JWT `kid`)."))
    notify_apns_team_id: str = field(default="", metadata=_doc("Apple team id (JWT `iss`)."))
    notify_apns_topic: str = field(
        default="", metadata=_doc("The iOS app's bundle id (`apns-topic`).")
    )
    notify_apns_url: str = field(
        default="https://api.push.apple.com",
        metadata=_doc("APNs base URL (https://api.sandbox.push.apple.com for development)."),
    )
    notify_sms_url: str = field(
        default="", metadata=_doc("SMS provider webhook URL. Empty: no SMS.")
    )
    notify_whatsapp_url: str = field(
        default="", metadata=_doc("WhatsApp provider webhook URL. Empty: no WhatsApp.")
    )
    notify_webhook_secret: str = field(
        default="",
        metadata=_doc("Secret that signs SMS and WhatsApp webhooks (HMAC-SHA256)."),
    )
    notify_ca_file: str = field(
        default="",
        metadata=_doc(
            "Extra CA certificates (PEM) trusted for SMTP TLS, push and webhook"
            " endpoints. Empty: the system's."
        ),
    )
    # [webhooks]: clinics' signed room webhooks (hooks/, docs/webhooks.md)
    webhooks_deliver: bool = field(
        default=True,
        metadata=_doc(
            "Deliver webhooks inside `wadud serve` and each `wadud api` replica (they"
            " share the work). Off: run `wadud hooks` (one or more replicas) instead."
        ),
    )
    webhooks_poll_interval: float = field(
        default=1.0, metadata=_doc("Seconds between a deliverer's looks for due deliveries.")
    )
    webhooks_concurrency: int = field(
        default=4, metadata=_doc("Deliveries one deliverer sends at once.")
    )
    webhooks_max_attempts: int = field(
        default=12, metadata=_doc("Tries of one delivery before it is logged as failed.")
    )
    webhooks_backoff_base: float = field(
        default=10.0,
        metadata=_doc("Seconds before the first retry; each later retry waits twice as long."),
    )
    webhooks_backoff_max: float = field(
        default=3600.0, metadata=_doc("Longest wait between two tries of a delivery.")
    )
    webhooks_timeout: float = field(
        default=10.0, metadata=_doc("Seconds one delivery (connect, send, answer) may take.")
    )
    webhooks_allow_networks: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Networks (CIDR, comma separated) webhook endpoints may reach although the"
            " TURN peer rules refuse them (loopback, private, link-local). Empty, the"
            " default: none. For tests and private deployments only."
        ),
    )
    turn_relay: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "doc": "The other keys of the [turn] table: the relay's own settings.",
            "env": False,
        },
    )

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    def with_secret(self) -> Settings:
        """The settings with ``secret_key`` filled in, generating and keeping one
        under ``data_dir`` the first time."""
        if self.secret_key:
            return self
        path = self.data_dir / "secret_key"
        if path.exists():
            key = path.read_text().strip()
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            key = secrets.token_urlsafe(48)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
        return dataclasses.replace(self, secret_key=key)


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)


def _coerce(name: str, value: Any, source: str) -> Any:
    hint = _HINTS[name]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is Path:
            return Path(value)
        if typing.get_origin(hint) is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        if typing.get_origin(hint) is list or isinstance(hint, types.GenericAlias):
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except ValueError:
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {hint}") from None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}".replace("-", "_")
        if name == "turn" and isinstance(value, dict):
            # The [turn] table is shared with `wadud turn`: keys that are our
            # settings are ours, the rest are the relay's (turn.config).
            relay = {}
            for k, v in value.items():
                field_name = "turn_" + k.replace("-", "_")
                if field_name in FIELDS and field_name != "turn_relay":
                    out[field_name] = v
                else:
                    relay[k.replace("-", "_")] = v
            out["turn_relay"] = relay
        elif isinstance(value, dict) and name not in FIELDS:
            out.update(_flatten(value, name + "_"))
        else:
            out[name] = value
    return out


def load(
    *,
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings: defaults, then the TOML ``file`` (or ``$WADUD_CONFIG``),
    then ``WADUD_*`` environment variables, then ``overrides`` (command-line
    flags; ``None`` values are ignored). Unknown keys are errors, not silence."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file = file or env.get(ENV_PREFIX + "CONFIG") or None
    if file:
        try:
            with open(file, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {file}: {exc}") from exc
        for name, value in _flatten(data).items():
            if name not in FIELDS:
                raise ConfigError(f"{file}: unknown setting {name!r}")
            values[name] = _coerce(name, value, str(file))
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in FIELDS or FIELDS[name].metadata.get("env") is False:
            raise ConfigError(f"environment: unknown setting {key}")
        values[name] = _coerce(name, value, "environment")
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, "command line")
    settings = Settings(**values)
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
        # RFC 9106 section 3.1: at least 8 KiB per lane, and wadud.auth hashes with 4.
        raise ConfigError("auth_hash_memory_kib must be at least 32")
    if settings.database_pool_min > settings.database_pool_max:
        raise ConfigError("database_pool_min is larger than database_pool_max")
    return settings
