"""Refunds: money back through the gateway, and refunds owed by hand when a
gateway refuses or money came too late."""
