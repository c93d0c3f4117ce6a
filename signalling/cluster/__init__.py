"""Call rooms across API replicas: the Redis link between them, a call
connection wherever its socket is, its first message read once, and the
routing, snapshots and takeover of rooms."""
