"""Settings: every setting of every role, as one frozen dataclass.

The ``[payments]`` and ``[sip]`` tables' fields are declared in
:mod:`wadud.config.payments` and :mod:`wadud.config.sip`, bases of
:class:`Settings`; :func:`~wadud.config.fields.setting` declares each.

Each field has its default and a line of documentation; ``docs/configuration.md``
documents every setting, and a test keeps the two in step. Where the values
come from, in order of precedence (defaults, a TOML file, the environment,
command-line flags), is :mod:`wadud.config.sources`; the rules that tie
settings together are :mod:`wadud.config.checks`.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wadud.config.fields import setting
from wadud.config.payments import PaymentsSettings
from wadud.config.sip import SipSettings


@dataclass(frozen=True)
class Settings(SipSettings, PaymentsSettings):
    # [server]
    host: str = setting("127.0.0.1", "Address the HTTP server binds.")
    port: int = setting(8080, "TCP port of the HTTP server.")
    public_url: str = setting(
        "",
        "Base URL users reach this server at (links in emails, checkout redirects, join"
        " links). Empty: http://HOST:PORT.",
    )
    trusted_proxies: list[str] = setting(
        [],
        "Addresses or networks of the load balancers or reverse proxies in front"
        " of the API, comma separated. A request from one of them is counted"
        " (rate limits, logs) as coming from the right-most address in"
        " X-Forwarded-For that is not one of them. Empty: the TCP peer is the client.",
    )
    data_dir: Path = setting(
        Path("var"),
        "Folder for local state: the embedded PostgreSQL cluster, the generated secret"
        " key, uploaded files.",
    )
    secret_key: str = setting(
        "",
        "Key that signs access and room tokens (HS256). Empty: generated once and kept in"
        " DATA_DIR/secret_key (fine for `wadud serve`; `wadud api` replicas must share one).",
    )
    max_body_bytes: int = setting(1_048_576, "Largest request body accepted; larger gets 413.")
    shutdown_timeout: float = setting(
        10.0, "Seconds in-flight requests get to finish after SIGTERM."
    )
    log_level: str = setting("info", "debug, info, warning or error.")
    log_format: str = setting("json", "json (one object per line) or text (for a terminal).")
    otel_endpoint: str = setting(
        "",
        "OpenTelemetry: base URL of an OTLP/HTTP collector (e.g. http://otel:4318) that"
        " receives traces of requests, SQL, the outbox and the bus. Empty: tracing off.",
    )
    otel_service_name: str = setting("wadud", "OpenTelemetry service.name of this process's spans.")
    otel_sample_ratio: float = setting(
        1.0,
        "Share of new traces kept, 0 to 1; a request that arrives with a sampled"
        " traceparent is always kept.",
    )
    metrics_listen: str = setting(
        "",
        "ADDR:PORT of a listener of its own that serves Prometheus /metrics, e.g."
        " 127.0.0.1:9100. Empty: no metrics. The public port never serves /metrics.",
    )
    metrics_token: str = setting(
        "",
        "When set, the metrics listener answers only `Authorization: Bearer TOKEN`"
        " (401 otherwise); for a listener other hosts can reach.",
    )
    # [database]
    database_url: str = setting(
        "",
        "PostgreSQL URL (postgresql://user:pass@host:port/db). Empty: an embedded"
        " PostgreSQL 16 under DATA_DIR/postgres, started and stopped with the server.",
    )
    database_pool_min: int = setting(2, "Connections kept open.")
    database_pool_max: int = setting(20, "Most connections at once.")
    database_migrate: bool = setting(
        True,
        "Apply pending migrations at start (under an advisory lock). Off: run"
        " `wadud migrate` yourself before starting.",
    )
    # [redis]
    redis_url: str = setting(
        "",
        "Redis URL for the bus (pub/sub and streams). Empty: an in-process bus, which"
        " only works when everything runs in one process (`wadud serve`).",
    )
    redis_region_url: str = setting(
        "",
        "Redis URL of this region's own control plane. Set, the rooms whose links name"
        " this `region` as their home (the room token's `home` claim: every participant"
        " in this region) are owned, placed and driven through it alone, and go on while"
        " the region is cut off from `redis_url` and the other regions; `wadud media`"
        " nodes register in both. Empty: every room uses `redis_url`"
        ' (docs/operations.md, "A region cut off").',
    )
    # [auth]
    auth_access_ttl: int = setting(900, "Access token lifetime, seconds.")
    auth_refresh_ttl: int = setting(30 * 86400, "Refresh token lifetime, seconds.")
    auth_issuer: str = setting("wadud", "`iss` claim of issued tokens.")
    auth_hash_concurrency: int = setting(
        2,
        "Password hashes (argon2id, 64 MiB each) computed at once, in threads of"
        " their own at low CPU priority; more wait their turn.",
    )
    auth_hash_wait: float = setting(
        10.0,
        "Seconds a sign-in waits for a hashing slot before it is refused with 503 and Retry-After.",
    )
    auth_hash_memory_kib: int = setting(
        65536,
        "Memory of one argon2id password hash, KiB (time cost 3, 4 lanes). The"
        " default, 64 MiB, is RFC 9106's second recommended option; lower it"
        " only on a host that cannot spare it. Hashes made under another value"
        " still verify (each hash carries its parameters).",
    )
    auth_totp_admins: bool = setting(
        False,
        "Admins must sign in with a TOTP code (RFC 6238) besides their password."
        " Doctors and staff: per clinic (PUT /api/v1/clinics/{id}/totp).",
    )
    auth_totp_issuer: str = setting(
        "Wadud", "Issuer name authenticator apps show beside a TOTP enrolment."
    )
    # [limits]  (docs/security.md, "Rate limits"; shared by replicas through Redis)
    limits_login_account_free: int = setting(
        5,
        "Failed sign-ins to one account before each further one must wait (429 with"
        " Retry-After); the wait doubles from LIMITS_LOGIN_DELAY. 0: no limit.",
    )
    limits_login_address_free: int = setting(
        30,
        "Failed sign-ins from one client address (any account) before each further"
        " one must wait, as for an account. 0: no limit.",
    )
    limits_login_delay: float = setting(
        1.0, "First wait, seconds, once the free sign-in failures are spent."
    )
    limits_login_delay_max: float = setting(
        900.0, "Longest wait between sign-in attempts, seconds."
    )
    limits_login_forget: float = setting(
        3600.0, "Seconds after the last failed sign-in that the failures are forgotten."
    )
    limits_anonymous_burst: int = setting(
        10, "Anonymous sessions one client address may start at once. 0: no limit."
    )
    limits_anonymous_per_hour: float = setting(
        60.0, "Anonymous sessions per hour and client address once the burst is spent."
    )
    limits_register_burst: int = setting(
        10, "Registrations one client address may make at once. 0: no limit."
    )
    limits_register_per_hour: float = setting(
        30.0, "Registrations per hour and client address once the burst is spent."
    )
    limits_check_burst: int = setting(
        10,
        "Pre-call checks (POST /api/v1/check) one client address may start at once. 0: no limit.",
    )
    limits_check_per_hour: float = setting(
        60.0, "Pre-call checks per hour and client address once the burst is spent."
    )
    limits_key_tokens_burst: int = setting(
        200,
        "Room tokens a clinic's API key may mint at once (POST /api/v1/tokens). 0: no limit.",
    )
    limits_key_tokens_per_hour: float = setting(
        6000.0, "Room tokens per hour and clinic API key once the burst is spent."
    )
    limits_load_tokens_burst: int = setting(
        20000,
        "Room tokens a load API key may mint at once, apart from every other limit. 0: no limit.",
    )
    limits_load_tokens_per_hour: float = setting(
        200000.0, "Room tokens per hour and load API key once the burst is spent."
    )
    # [outbox]
    outbox_batch: int = setting(200, "Events relayed per round.")
    outbox_poll_interval: float = setting(
        10.0,
        "Seconds between outbox polls, for events no wake-up announced (every process"
        " that writes events and runs no relay sends a NOTIFY instead).",
    )
    outbox_retention: float = setting(86400.0, "Seconds published outbox rows are kept.")
    # [booking]
    booking_hold_minutes: int = setting(
        10, "How long a held slot waits for payment before it lapses."
    )
    booking_search_page_max: int = setting(100, "Largest page size of doctor search.")
    booking_upload_max_bytes: int = setting(10 * 1_048_576, "Largest credential document upload.")
    # [chat]
    chat_max_body_bytes: int = setting(
        8192, "Largest chat message body, in bytes of UTF-8; larger is refused."
    )
    chat_rate_per_second: float = setting(
        5.0, "Chat messages a user may send per second (sustained), per API node."
    )
    chat_rate_burst: int = setting(
        30, "Chat messages a user may send in a burst before the rate applies."
    )
    chat_attachment_max_bytes: int = setting(
        10 * 1_048_576, "Largest chat attachment (image or PDF) upload."
    )
    chat_attachment_url_ttl: int = setting(
        300, "Lifetime of a signed chat attachment URL, seconds."
    )
    chat_encryption_keys: list[str] = setting(
        [],
        "Chat encryption keys at rest as KID:KEY (KEY: 32 bytes, urlsafe base64), comma"
        " separated; the first encrypts, all decrypt, so a key can rotate. Empty: one key"
        " derived from SECRET_KEY. They also wrap every person's data key (chat, bank"
        " transfer proofs, doctors' payout bank details) and seal the payout details of"
        " doctors without an account.",
    )
    chat_reconcile_interval: float = setting(
        1.0,
        "Seconds between checks of PostgreSQL for chat events the bus did not deliver"
        " (lost pub/sub messages, a Redis restart).",
    )
    chat_typing_interval: float = setting(
        2.0, "Least seconds between two relayed typing indicators of a user."
    )
    chat_client_queue_max: int = setting(
        5000,
        "Chat frames queued for one slow WebSocket client before it is disconnected"
        " (it resumes from its last sequence).",
    )
    # [consent]  (docs/privacy.md)
    consent_required: list[str] = setting(
        [],
        "Consent purposes a patient must have accepted to book and to join a"
        " booking's call, comma separated (telehealth_consultation, data_processing,"
        " call_recording, marketing). Empty: none required.",
    )
    consent_required_regions: list[str] = setting(
        [],
        "Per-region overrides of consent_required as REGION:purpose+purpose, comma"
        " separated, e.g. AE:telehealth_consultation+data_processing+call_recording."
        " REGION: with nothing after it requires nothing there.",
    )
    # [privacy]  (docs/privacy.md, "Erasure")
    privacy_erasure_confirm_seconds: int = setting(
        900,
        "Seconds a patient's erasure confirmation token stays valid between the"
        " request and the confirmation.",
    )
    # [retention]  (docs/privacy.md, "Retention"; 0 days: kept until erased)
    retention_interval: float = setting(
        3600.0,
        "Seconds between retention rounds inside `wadud serve` and `wadud api` (one"
        " replica runs each round, under an advisory lock). 0: no scheduled rounds;"
        " run `wadud retention run` yourself.",
    )
    retention_batch: int = setting(1000, "Rows one retention delete statement removes at most.")
    retention_chat_days: int = setting(
        0,
        "Days a consultation conversation is kept after its last message; then it is"
        " deleted whole (messages, attachments). 0: kept until the patient is erased.",
    )
    retention_expired_holds_days: int = setting(30, "Days an unpaid, lapsed booking hold is kept.")
    retention_webhook_days: int = setting(
        180, "Days payment gateways' webhook payloads (the deduplication log) are kept."
    )
    retention_notify_days: int = setting(
        90, "Days the notification log (finished jobs, their deliveries and attempts) is kept."
    )
    retention_call_report_days: int = setting(
        90,
        "Days a visit's call report (quality samples, transport events) is kept after"
        ' the call ended (docs/calls.md, "Call reports"). 0: kept until erased.',
    )
    retention_sessions_days: int = setting(
        30, "Days ended sign-in sessions (revoked, or expired) and their tokens are kept."
    )
    # [storage]
    storage_backend: str = setting(
        "local", "Where uploaded files live: local (DATA_DIR/uploads) or s3."
    )
    storage_s3_endpoint: str = setting(
        "", "S3-compatible endpoint URL (MinIO, ...). Empty: AWS S3 of S3_REGION."
    )
    storage_s3_bucket: str = setting("", "S3 bucket for uploaded files.")
    storage_s3_region: str = setting("us-east-1", "S3 region.")
    storage_s3_access_key: str = setting("", "S3 access key id.")
    storage_s3_secret_key: str = setting("", "S3 secret access key.")

    # [turn]  (the relay's own keys, e.g. listen_udp or relay_ips, are read
    # from the same table by `wadud turn`; see docs/turn.md)
    turn_secrets: list[str] = setting(
        [],
        "Shared secrets of the TURN relay's REST credentials (coturn use-auth-secret),"
        " comma separated; the first signs, all verify. The API and `wadud turn` read the"
        " same key. Empty in `wadud serve`: its own relay generates one.",
    )
    turn_urls: list[str] = setting(
        [],
        "TURN URLs handed to clients with their credentials, e.g."
        " turn:turn.example.com:3478?transport=udp. Empty in `wadud serve`: the"
        " embedded relay's.",
    )
    turn_credential_ttl: int = setting(
        14_400, "Lifetime of TURN credentials handed to users, seconds."
    )
    turn_credentials_burst: int = setting(
        20, "TURN credentials one user may fetch at once. 0: no limit."
    )
    turn_credentials_per_hour: float = setting(
        120.0, "TURN credentials per hour and user once the burst is spent."
    )
    turn_embedded: bool = setting(
        True, "`wadud serve` only: run a TURN relay on 127.0.0.1 in the same process."
    )
    turn_embedded_port: int = setting(
        3478, "Port of the embedded relay (UDP and TCP); when taken, a free port is used instead."
    )
    turn_embedded_tls_port: int = setting(
        5349,
        "Port of the embedded relay's TLS listener (turns:); when taken, a free port is"
        " used instead. Its certificate is turn_tls_cert, else a self-signed one kept"
        " in DATA_DIR/turn-tls, which a browser refuses until it is trusted there.",
    )
    turn_tls_cert: str = setting(
        "",
        "PEM certificate chain of the relay's TLS listener (turns:), for `wadud turn`"
        " and `wadud serve`'s relay alike. It must name the host of the turns: URLs.",
    )
    turn_tls_key: str = setting("", "PEM private key of turn_tls_cert.")
    media_host: str = setting(
        "127.0.0.1", "Address the media worker's UDP socket binds (0.0.0.0 on a media node)."
    )
    media_port: int = setting(
        40000,
        "UDP port of the media worker, shared by every peer (ICE-lite). In `wadud serve`,"
        " when taken, a free port is used instead.",
    )
    media_announced_addresses: list[str] = setting(
        [],
        "Addresses put in the worker's ICE candidates, comma separated, when peers"
        " reach it at another address than it binds (NAT, cloud public IPs)."
        " Empty: the bind address.",
    )
    media_consent_timeout: float = setting(
        30.0,
        "Seconds without a peer's ICE consent checks (RFC 7675) before its transport is closed.",
    )
    media_remb_max_bitrate: int = setting(
        2_500_000,
        "Most bits per second the media worker's REMB lets a publisher without"
        " transport-cc send (its bandwidth estimate is capped here).",
    )
    media_simulcast: bool = setting(
        True,
        "Accept publishers' simulcast (RFC 8853: three VP8 layers from a browser"
        " capturing 720p) and send each subscriber the layer its bandwidth and"
        " tile size call for, pausing video when even the lowest layer does not"
        " fit (audio goes on). Off: a simulcast offer is answered with one layer.",
    )
    media_red: bool = setting(
        True,
        "Negotiate Opus RED (RFC 2198, redundant audio as Chrome and Firefox offer it):"
        " publishers send each audio frame again in the next packets, which subscribers"
        " that accept RED use to fill losses; subscribers that do not (aiortc, older"
        " Safari) get plain Opus. Off: audio is plain Opus (with in-band FEC) for everyone.",
    )
    recording_segment_seconds: float = setting(
        4.0,
        "Seconds of a recorded track's RTP per sealed segment the media worker stores"
        " (a segment also ends at 1 MiB).",
    )
    recording_queue_bytes: int = setting(
        8 << 20,
        "Bytes of a room's recording that may wait for the file store (packets not yet"
        " written, segments not yet stored) before the recording is stopped as failed"
        " (the store is slower than the media); the call goes on.",
    )
    recording_write_timeout: float = setting(
        10.0,
        "Seconds the media worker waits for the file store to take one recorded segment"
        " before the recording is stopped as failed; the call goes on.",
    )
    media_workers: int = setting(
        0,
        "Worker processes of `wadud media`, each owning one UDP port (media_port,"
        " media_port+1, ...). 0: one per core.",
    )
    media_http: str = setting(
        "127.0.0.1:9300",
        "ADDR:PORT where `wadud media` serves /healthz, /readyz and /metrics"
        " (every worker's sfu_* metrics, labelled by worker).",
    )
    media_node_id: str = setting(
        "",
        "Name of this media node in the registry. Empty: the host name and a short random suffix.",
    )
    media_capacity: int = setting(
        400,
        "Transports one worker takes before placement passes it over for new rooms"
        " (each participant has up to two).",
    )
    media_heartbeat: float = setting(
        1.0, "Seconds between a media worker's registry updates (load, state)."
    )
    media_worker_ttl: float = setting(
        3.0,
        "Seconds a media worker's registry entry lives without a heartbeat; after"
        " that it counts as dead and its rooms are placed elsewhere.",
    )
    media_rpc_timeout: float = setting(
        5.0,
        "Seconds signalling waits for a media worker's reply over Redis before the"
        " call fails as media-unavailable.",
    )
    media_drain_timeout: float = setting(
        30.0,
        "Seconds a draining media node (SIGTERM) waits for its rooms to move"
        " before its workers stop anyway.",
    )
    media_start_retries: int = setting(
        5,
        "Times in a row a `wadud media` worker may fail to start the same way (its"
        " UDP port taken, ...) before the node counts it as failed: /readyz answers"
        " 503 naming the reason, and once every worker has failed the node exits 1"
        " for its supervisor (systemd, Kubernetes) to see. Restarts go on meanwhile;"
        " a worker that cannot reach Redis is restarted without being counted.",
    )
    media_restart_backoff: float = setting(
        0.5,
        "Seconds before a `wadud media` worker that keeps dying is restarted the"
        " second time; each later restart waits twice as long, up to"
        " media_restart_backoff_max. The first restart is at once.",
    )
    media_restart_backoff_max: float = setting(
        30.0, "Longest wait before a `wadud media` worker that keeps dying is restarted."
    )
    region: str = setting(
        "",
        "Region of this process: a `wadud api` replica places rooms of tokens"
        " without a region claim there; a `wadud media` node registers its"
        " workers under it. Empty: no region (any worker).",
    )
    media_region_distances: str = setting(
        "",
        "How far regions are apart, as `A-B=N` pairs separated by commas"
        " (e.g. `pk-ae=40,pk-sa=60,ae-sa=30`, one-way milliseconds): a region"
        " with no live media worker has its participants placed in the nearest"
        " region that has one. Unlisted pairs count as farthest.",
    )
    call_owner_lease: float = setting(
        3.0,
        "Seconds an API replica's ownership of a call room lives without renewal;"
        " when the owner dies another replica takes the room over after this.",
    )
    call_resume_grace: float = setting(
        20.0,
        "Seconds a participant whose WebSocket dropped stays in the room, media"
        " flowing, waiting to resume.",
    )
    call_resume_grace_app: float = setting(
        60.0,
        "call_resume_grace for a mobile app (a join whose `client.platform` is ios or"
        " android): a phone app in the background is suspended or loses its socket"
        " and comes back when the person returns to it. The longer of this and"
        " call_resume_grace applies to an app.",
    )
    call_home_regions: list[str] = setting(
        [],
        "Regions that run their own control plane (`redis_region_url`) for their"
        " clinics' visits: a booking of a clinic in one of them gets video links"
        " homed there (the room token's `home`), so the visit goes on when the"
        " region is cut off; its participants join through that region's servers.",
    )
    call_cutoff_grace: float = setting(
        120.0,
        "Seconds a participant stays in the room when the API replica holding its"
        " WebSocket falls silent (died, or its region was cut off from this one):"
        " after a cut heals its clients resume within this (docs/operations.md).",
    )
    call_ping_interval: float = setting(
        15.0, "Seconds between the server's pings on call WebSockets."
    )
    call_max_frame_bytes: int = setting(
        65_536, "Largest signalling frame read; a bigger one closes the socket (1009)."
    )
    call_max_participants: int = setting(16, "Most participants (waiting included) in one room.")
    call_frame_ancestors: str = setting(
        "*",
        "Who may put the call page in an iframe: a CSP frame-ancestors source list,"
        " e.g. `https://clinic.example https://*.clinic.example`. `*`: any site.",
    )
    call_allowed_origins: list[str] = setting(
        [],
        "Sites (origins: scheme://host[:port], comma separated) that may call POST"
        " /api/v1/check and /api/v1/calls/* from the browser (CORS) and frame every"
        " call page, besides each clinic's own `allowed_origins`. Empty: only"
        " clinics' origins.",
    )
    call_demo: bool = setting(
        False,
        "Serve /demo, which creates a demo room and hands out doctor and patient links"
        " to anyone. `wadud serve` turns it on; never on a public deployment.",
    )
    # [notify]: notifications (notify/, docs/notifications.md)
    notify_in_serve: bool = setting(
        True,
        "Run the notifier inside `wadud serve`. Deployments of `wadud api` run"
        " `wadud notify` (one or more replicas) instead.",
    )
    notify_poll_interval: float = setting(
        10.0,
        "Longest wait between the notifier's looks for work no wake announced: it also"
        " wakes on the NOTIFY a relay sends after each published batch, and when the"
        " next scheduled job or retry comes due.",
    )
    notify_concurrency: int = setting(4, "Deliveries one notifier sends at once.")
    notify_max_attempts: int = setting(
        8, "Tries of one delivery before it is logged as failed for good."
    )
    notify_backoff_base: float = setting(
        30.0, "Seconds before the first retry; each later retry waits twice as long."
    )
    notify_backoff_max: float = setting(3600.0, "Longest wait between two tries of a delivery.")
    notify_send_timeout: float = setting(20.0, "Seconds one send (SMTP, push, webhook) may take.")
    notify_reminder_minutes: list[str] = setting(
        ["1440", "15"],
        "Reminders before a booking's start, in minutes, comma separated."
        ' 360 or more use the "upcoming consultation" wording.',
    )
    notify_chat_delay: float = setting(
        120.0,
        "Seconds a chat message may stay unread before its recipient is notified"
        " (someone online reads it sooner, and hears nothing).",
    )
    notify_email_from: str = setting("Wadud <no-reply@localhost>", "From address of emails.")
    notify_smtp_host: str = setting("", "SMTP server for email. Empty: no email.")
    notify_smtp_port: int = setting(587, "SMTP server port.")
    notify_smtp_tls: str = setting(
        "starttls", "starttls (port 587), tls (implicit TLS, port 465) or none (local relay)."
    )
    notify_smtp_username: str = setting("", "SMTP user name, if any.")
    notify_smtp_password: str = setting("", "SMTP password, if any.")
    notify_vapid_private_key: str = setting(
        "", "Web push VAPID private key (base64url raw P-256 key or PEM). Empty: no web push."
    )
    notify_vapid_subject: str = setting(
        "", "VAPID contact (`mailto:ops@example.com` or an https URL)."
    )
    notify_fcm_service_account: str = setting(
        "", "Path of the Firebase service account JSON file. Empty: no FCM."
    )
    notify_fcm_url: str = setting("https://fcm.googleapis.com", "FCM HTTP v1 API base URL.")
    notify_apns_key_file: str = setting("", "Path of the APNs auth key (.p8). Empty: no APNs.")
    notify_apns_key_id: str = setting("", "APNs auth key id (JWT `kid`).")
    notify_apns_team_id: str = setting("", "Apple team id (JWT `iss`).")
    notify_apns_topic: str = setting("", "The iOS app's bundle id (`apns-topic`).")
    notify_apns_url: str = setting(
        "https://api.push.apple.com",
        "APNs base URL (https://api.sandbox.push.apple.com for development).",
    )
    notify_sms_url: str = setting("", "SMS provider webhook URL. Empty: no SMS.")
    notify_whatsapp_url: str = setting("", "WhatsApp provider webhook URL. Empty: no WhatsApp.")
    notify_webhook_secret: str = setting(
        "", "Secret that signs SMS and WhatsApp webhooks (HMAC-SHA256)."
    )
    notify_ca_file: str = setting(
        "",
        "Extra CA certificates (PEM) trusted for SMTP TLS, push and webhook"
        " endpoints. Empty: the system's.",
    )
    # [webhooks]: clinics' signed room webhooks (hooks/, docs/webhooks.md)
    webhooks_deliver: bool = setting(
        True,
        "Deliver webhooks inside `wadud serve` and each `wadud api` replica (they"
        " share the work). Off: run `wadud hooks` (one or more replicas) instead.",
    )
    webhooks_poll_interval: float = setting(
        10.0,
        "Longest wait between a deliverer's looks for work no wake announced: it also"
        " wakes on the NOTIFY a relay sends after each published batch, and when the"
        " next retry comes due.",
    )
    webhooks_concurrency: int = setting(4, "Deliveries one deliverer sends at once.")
    webhooks_max_attempts: int = setting(12, "Tries of one delivery before it is logged as failed.")
    webhooks_backoff_base: float = setting(
        10.0, "Seconds before the first retry; each later retry waits twice as long."
    )
    webhooks_backoff_max: float = setting(3600.0, "Longest wait between two tries of a delivery.")
    webhooks_timeout: float = setting(
        10.0, "Seconds one delivery (connect, send, answer) may take."
    )
    webhooks_allow_networks: list[str] = setting(
        [],
        "Networks (CIDR, comma separated) webhook endpoints may reach although the"
        " TURN peer rules refuse them (loopback, private, link-local). Empty, the"
        " default: none. For tests and private deployments only.",
    )
    # [recording]: recording visits with consent (recording/, docs/recording.md)
    recording_in_serve: bool = setting(
        True,
        "Run the recorder inside `wadud serve`. Deployments of `wadud api` run"
        " `wadud recorder` (one or more replicas) instead.",
    )
    recording_poll_interval: float = setting(
        10.0,
        "Longest wait between a recorder's looks for stopped recordings: it also wakes"
        " on the NOTIFY each stop sends, and when a stopped recording's grace has passed.",
    )
    recording_grace: float = setting(
        10.0,
        "Seconds a stopped recording waits before a recorder takes it, so the"
        " media worker's last segments land first.",
    )
    recording_lease: float = setting(
        300.0,
        "Seconds a recorder holds a recording it works on (renewed while it"
        " works); a recorder that died leaves it to another after this.",
    )
    recording_max_attempts: int = setting(
        3, "Tries of one recording (crashes, storage errors) before it is marked failed."
    )
    recording_composite: bool = setting(
        False,
        "Also make a side-by-side composite of all participants (transcoded by"
        " the recorder, never on media nodes).",
    )
    recording_retention_days: int = setting(
        90,
        "Days a recording (its files, segments and rows) is kept after the call."
        " 0: kept until deleted or the patient is erased.",
    )
    turn_relay: dict[str, Any] = setting(
        {}, "The other keys of the [turn] table: the relay's own settings.", env=False
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
