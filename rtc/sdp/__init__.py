"""Session descriptions for WebRTC (RFC 8866 as JSEP uses it, RFC 8829): the
session and its parse and serialise (``session``), each ``m=`` section
(``media``), the typed attributes of a section (``attributes``), ICE and DTLS
(``transport``), and the lexical rules they are read with (``grammar``)."""
