"""Consultation chat: persisted, ordered, fanned out across nodes.

``chat.protocol`` is the WebSocket frame codec (no I/O); the SQL is
``chat.access`` (who may see a conversation), ``chat.conversations``
(opening one, members' read positions), ``chat.eventlog`` (appending events
in order, reading them back) and ``chat.attachments`` (attachments' rows);
``chat.crypto`` is encryption at rest, ``chat.hub`` the per-node fan-out and
gap filling, ``chat.service`` the operations, ``chat.http`` the REST
endpoints and ``chat.socket`` the WebSocket; ``chat.http.install`` plugs it
all into the app.
"""
