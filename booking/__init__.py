"""Booking: doctors, their schedules, bookings and their lifecycle, refunds,
instant consultations, reviews, call reports; payments beside them.

Where things are, lowest first (each imports only what is listed before it):

* the pure cores and plain pieces every folder may use: :mod:`.errors`,
  :mod:`.lifecycle` (the booking state machine), :mod:`.refunds` (the
  cancellation policy), :mod:`.calls` (a booking's video links),
  :mod:`.clinics`, :mod:`.privacy` (bookings' data rights and retention);
* :mod:`.schedule`: availability and free slots (pure cores) and their
  database glue;
* :mod:`.doctors`: profiles, credentials, hours, search and reviews;
* :mod:`.bookings`: holds, transitions, cancellation and rescheduling, the
  instant queue;
* :mod:`.call_reports`: each video visit's call report;
* the web: :mod:`.pages` (the patient's pages), :mod:`.api` (one handler
  module per resource: parse, authorize, call one service function, render)
  and :mod:`.http`, which installs them.

:mod:`.payments` stands above the bookings code, which never imports it.
"""
