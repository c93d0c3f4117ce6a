"""Paying through a gateway: a booking's payment intent and its hosted
checkout, the redirect landing, gateway webhooks, settling what they prove,
and the sweeper of stale intents."""
