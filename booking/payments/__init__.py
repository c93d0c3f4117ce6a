"""Payments: intents and their state machine, the gateway interface, the ledger.

The modules here are what every part of payments shares, and they stand
below all of them: the pure cores (:mod:`.intent` the state machine,
:mod:`.ledger`, :mod:`.gateway` the gateway interface, :mod:`.reach`, the
errors), whose names this package re-exports, and the SQL every part writes
the same way (:mod:`.rows`, :mod:`.postings`, :mod:`.keys`). Above them,
one folder per concept, each importing only the folders listed before it:

* :mod:`.gateways`: the adapters (the sandbox, JazzCash, card, EasyPaisa),
  above the interface they implement; only :mod:`.gateways.registry` builds
  them, and the rest of payments knows a gateway by the interface;
* :mod:`.refunds`: money back through the gateway, or owed by hand;
* :mod:`.checkout`: a booking's payment intent, its hosted checkout, the
  redirect landing, gateway webhooks, settling what they prove;
* :mod:`.transfers`: bank transfer, from the reference to reconciliation;
* :mod:`.easypaisa`: EasyPaisa's pages, its simulator and inquiry round;
* :mod:`.payouts`: what doctors are owed, and paying them.

In each folder, the HTTP handlers are ``http.py`` (``http_<what>.py`` when
there are several, ``pages.py`` for pages a browser is served): they parse
the request, check who asks, call one service function and shape the
answer, and hold no SQL. The SQL is in the folder's service modules, and the
pure logic in modules that import neither aiohttp nor asyncpg
(:mod:`.transfers.core`, :mod:`.payouts.batch`).

:mod:`.http`, on top, plugs them into the app. The bookings code never
imports this package: a cancellation's refund is handed to it
(``booking.bookings.changes.Refunder``).
"""
