"""The bridge's SIP transport (RFC 3261 section 18): its UDP socket and TCP
listener, the hop each message came by, the TCP streams, the answers to
what the parser refused, and what all that counts."""
