"""The payment gateways' adapters, each an implementation of
:class:`booking.payments.gateway.Gateway`: the built-in sandbox, JazzCash,
a Stripe-style card processor, and EasyPaisa with its local simulator.

They stand above the payments core and import only its pure modules (the
interface, the intent, the errors); :mod:`.json_api` is the one request to a
processor's API they share, and :mod:`.registry` builds the ones the
configuration asks for. The service modules never import an adapter: they
are handed a :class:`~booking.payments.gateway.GatewayRegistry`. Our own
HTTP side of a gateway (the sandbox's checkout page, EasyPaisa's postback
bridge and IPN handler, its inquiry round) works through the service, so it
stays with the payments API above both.
"""
