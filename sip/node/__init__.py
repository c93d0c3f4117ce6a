"""The phone bridge's I/O: its SIP endpoint, each call's phone leg and prompts,
and its seat in the room."""
