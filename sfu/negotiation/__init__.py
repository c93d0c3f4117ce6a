"""The control side of a media worker: rooms, transports, offer/answer and subscribers' m=
sections.
"""
