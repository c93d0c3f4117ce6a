"""RTP (RFC 3550 section 5): the fixed header read and rewritten in place
(``header``), header extensions (``extensions``, RFC 8285), the packet as a
value (``packet``), and sequence-number arithmetic (``sequence``)."""
