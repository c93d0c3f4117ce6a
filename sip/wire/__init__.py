"""SIP as bytes and state, without I/O (RFC 3261).

Lowest first: ``grammar`` (the basic rules every header value shares),
``uri`` (SIP, SIPS and tel URIs), ``headers`` (the header multi-map),
``fields`` (addresses, Via, CSeq), ``message`` (requests and responses,
the datagram parser, responses built per section 8.2.6), ``framing`` (SIP
over TCP and the CRLF keepalives), and ``sdp`` (the phone side's offer and
answer).
"""
