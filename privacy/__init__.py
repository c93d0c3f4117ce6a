"""Privacy: patients' consent and the tamper-evident audit trail.

Floor: beside ``rtc/`` and the features' cores, below ``booking/``, ``chat/``
and ``signalling/``, so those can ask for consent and write audit rows. It
imports only the ground (``wadud/``); export, erasure and retention hang off
per-feature providers registered by the assembly, never by importing them.

- ``privacy.consent``: versioned consent texts per (region, purpose, language),
  the accept/withdraw history and the check ``require_consents``.
- ``privacy.audit``: one append-only, hash-chained table (``audit_log``),
  written with ``record`` and walked by ``verify`` (``wadud audit verify``).
- ``privacy.http``: the consent and audit endpoints.
"""
