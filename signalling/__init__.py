"""Call signalling: the ``/ws`` WebSocket protocol (docs/protocol.md, "Calls"),
rooms with a waiting room, and the bridge to the media worker.

``protocol`` (frame codec) and ``room`` (room state) are sans-I/O cores;
``service`` is their asyncio adapter and ``http`` installs it."""
