"""EasyPaisa's side of the app: the postback bridge, the mobile-account page
and the IPN handler, the built-in simulator, and the inquiry round. The
adapter itself is :mod:`booking.payments.gateways.easypaisa`."""
