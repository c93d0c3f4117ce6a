"""How signalling drives a media worker: the requests, results and events, over Redis, and the
worker registry.
"""
