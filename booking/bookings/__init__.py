"""Bookings in the database: who reaches a booking (:mod:`.access`), its
history and events (:mod:`.events`), lifecycle transitions
(:mod:`.transitions`), holds and the hold sweeper (:mod:`.holds`),
cancellation with refunds and rescheduling (:mod:`.changes`), instant
consultations' waiting queue (:mod:`.queue`), and what the patient's pages
say about a visit (:mod:`.visits`).

Every function that changes a booking runs on the caller's connection,
inside the caller's transaction (each also opens one of its own, which nests
as a savepoint), so an HTTP handler, the payments service and the sweeper
all get the same rules; the functions the HTTP handlers call take the pool
and own their transaction. The rules:

* the row is locked ``FOR UPDATE`` before its state is read, and the pure
  table in :mod:`booking.lifecycle` decides the next state;
* every change writes a ``booking_events`` row and an outbox event
  ``booking.<new state>`` in the same transaction, so the event exists if and
  only if the change committed;
* time is arbitrated by the ``bookings_no_overlap`` exclusion constraint, never
  by a check in Python: a check can only be a courtesy that gives a clearer
  error, the constraint is what makes a race impossible.

Lock order, to keep deadlocks out: booking rows first (a doctor's lapsed holds
ordered by ``(hold_expires_at, id)``, or the one booking acted on), then the
doctor's row last (``refresh_next_free`` updates it just before commit).

Who sees what: a patient their own bookings, a doctor theirs, clinic staff
their clinic's, admins all. A booking outside the caller's scope is a 404, the
same as one that does not exist, so ids do not leak across tenants.
"""
