"""The Python client of Wadud calls: a participant on aiortc that joins a room
over the signalling WebSocket and sends and receives media on two peer
connections (docs/protocol.md, docs/calls.md).

It needs aiortc and PyAV, which the server does not: install it with
``pip install wadud[client]``. The server's packages never import it.

- :mod:`wadud_client.call`: :class:`~wadud_client.call.CallClient`, one participant,
  which holds the pieces below;
- :mod:`wadud_client.socket`: its signalling WebSocket, requests and their answers;
- :mod:`wadud_client.room`: what it knows of its room, from the server's frames;
- :mod:`wadud_client.media`: its two peer connections, publishing, receiving,
  and getting media back when a path dies;
- :mod:`wadud_client.changes`: waiting for any of that to change;
- :mod:`wadud_client.sources`: synthetic camera and microphone;
- :mod:`wadud_client.simulcast`: three encoders sent as one simulcast track;
- :mod:`wadud_client.received`, :mod:`wadud_client.nack`,
  :mod:`wadud_client.jitter`: what it receives, and how its aiortc receivers
  recover from loss as browsers do;
- :mod:`wadud_client.network`, :mod:`wadud_client.errors`;
- ``python -m wadud_client --url URL --token TOKEN`` (:mod:`wadud_client.cli`)
  joins a room and publishes a test pattern.
"""
