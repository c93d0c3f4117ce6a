"""WebRTC transport pieces: sans-I/O protocol cores with thin asyncio adapters."""
