"""The HTTP side every role shares: declaring endpoints, the app, middlewares,
tokens and accounts, rate limits.
"""
