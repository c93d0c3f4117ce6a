"""The forwarding core: routing table, per-packet fan-out, simulcast switching, RTP repair, and the
native fan-out.
"""
