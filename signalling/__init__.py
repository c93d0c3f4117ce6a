"""Call signalling: the ``/ws`` WebSocket protocol (docs/protocol.md, "Calls"),
rooms with a waiting room, and the bridge to the media worker.

Lowest floor first, each importing only those below it:

* ``errors`` and ``protocol``: the wire (frames and their error codes),
  sans-I/O; the Python client imports these two and nothing else;
* ``room/``: one room's state without I/O (``room.core.Room``);
* ``media/``: where a room's media runs (placement, sites, the media lane);
* ``live/``: a room as this replica runs it (``live.room.CallRoom``) and what
  it leaves beside the call (recording rows, webhook events, call report);
* ``cluster/``: rooms across API replicas over Redis;
* ``service/``: the call service, the asyncio side in one process;
* ``edge/``: ``GET /ws``, the call page, the pre-call check, the call's chat.
"""
