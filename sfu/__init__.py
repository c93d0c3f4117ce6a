"""The media worker: rooms, tracks, subscriptions and the RTP forwarding core."""
