"""Recording a room's tracks: the sans-I/O core and its asyncio adapter."""
