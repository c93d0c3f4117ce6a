"""A peer's transport on the worker's shared socket: WebRTC peers, relay links between workers, and
the SFU's side of offer/answer.
"""
