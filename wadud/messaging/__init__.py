"""How processes tell each other things: the bus, the transactional outbox,
background loops, revocation.
"""
