"""Clinics' signed room webhooks (docs/webhooks.md).

Floor: beside ``notify/``. Room events reach it as outbox rows (topics
``room.<event>``, :mod:`hooks.events`); a trigger of migration 0020 turns
each committed one into one delivery per subscribed endpoint of the
booking's clinic. It imports no feature except the TURN relay's pure peer
rules (:mod:`turn.policy`), which its endpoint addresses share.

- ``hooks.events``: the event names and :func:`~hooks.events.emit`, which any
  feature calls in its transaction to send one.
- ``hooks.addresses``: which endpoint URLs and addresses may be reached.
- ``hooks.service``: :class:`~hooks.service.Deliverer`, the loops that
  claim due deliveries and send them, and ``wadud hooks``.
- ``hooks.http``: the clinic staff's API (endpoints, deliveries, redeliver)
  and the deliverer inside ``wadud serve`` and ``wadud api``.
"""
