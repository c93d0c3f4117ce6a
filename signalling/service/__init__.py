"""The call service: the asyncio side of call signalling in one process."""
