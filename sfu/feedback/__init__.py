"""What the SFU learns from its legs: RTCP reports, bandwidth feedback and estimation, connection
quality, the active speaker.
"""
