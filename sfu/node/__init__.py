"""``wadud media``: the node's supervisor, its worker processes, their hot path, relay links and
metrics.
"""
