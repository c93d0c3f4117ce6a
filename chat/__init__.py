"""Consultation chat: persisted, ordered, fanned out across nodes.

``chat.protocol`` is the WebSocket frame codec (no I/O), ``chat.store`` the
SQL, ``chat.crypto`` encryption at rest, ``chat.hub`` the per-node fan-out and
gap filling, ``chat.service`` the operations, and ``chat.http`` plugs it all
into the app (``install``).
"""
