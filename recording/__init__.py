"""Recording a visit with everyone's consent (issue 23, docs/recording.md).

Floor: a feature beside ``hooks/`` and ``notify/``. The media worker writes
each recorded track's RTP as sealed segments (:mod:`rtc.rtpdump`);
signalling asks, collects consent and starts and stops a recording through
:class:`recording.store.Recordings`; this package keeps the rows, turns the
segments into playable files after the call, and serves them.

- ``recording.store``: the rows, their state machine and the Python API
  signalling calls (:class:`~recording.store.Recordings`).
- ``recording.remux``: RTP (VP8, Opus) to one WebM per participant without
  transcoding (pure: bytes in, a file out).
- ``recording.recorder``: ``wadud recorder``, the job loop that claims
  stopped recordings and remuxes them.
- ``recording.privacy``: export, erasure and retention.
- ``recording.http``: the API (list, download, delete) and the recorder
  inside ``wadud serve``.
"""
