"""SIP as bytes and state, without I/O (RFC 3261)."""
