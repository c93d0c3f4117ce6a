"""Clinics' signed room webhooks (docs/webhooks.md).

Floor: beside ``notify/``. Room events reach it as outbox rows (topics
``room.<event>``, :mod:`hooks.events`); a trigger of migration 0020 turns
each committed one into one delivery per subscribed endpoint of the
booking's clinic. It imports no feature except the TURN relay's pure peer
rules (:mod:`turn.policy`), which its endpoint addresses share.

- ``hooks.events``: the event names and :func:`~hooks.events.emit`, which any
  feature calls in its transaction to send one.
- ``hooks.addresses``: which endpoint URLs and addresses may be reached.
- ``hooks.store``: the SQL (endpoints, claiming due deliveries).
- ``hooks.service``: :class:`~hooks.service.Deliverer`, the loops that send.
- ``hooks.http``: the clinic admin's API (endpoints, deliveries, redeliver).
"""
