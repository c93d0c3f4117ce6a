"""RTCP (RFC 3550 section 6): the common header and compound framing
(``framing``), sender and receiver reports, SDES and BYE (``reports``), the
feedback an SFU speaks (``feedback``: NACK, PLI, FIR, REMB; ``transport_cc``),
and compound packets with the opaque rest (``compound``)."""
