"""The call service, the asyncio side of call signalling in one process: its
WebSockets and their frames (``calls``), the rooms it owns and how their
cores' outputs are carried out (``rooms``), joins (``joining``), the frames
that call a media worker (``media_frames``), and what the workers say of the
rooms (``media_events``)."""
