"""Call signalling as the web reaches it: ``GET /ws`` and its control planes,
the call page and its assets, the pre-call check, and the call's chat by room
token."""
