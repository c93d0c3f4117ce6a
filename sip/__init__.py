"""The phone bridge: patients and guests on a plain phone in a visit.

A SIP endpoint (RFC 3261) that a clinic points its trunk or PBX at. A call
that keys a visit's PIN joins the room as an ordinary participant through
the SFU; the bridge decodes and mixes audio beside the media workers, never
inside them. Concept folders, lowest floor first:

* ``errors``: the package's one root exception and its typed children;
  ``formats``: what the bridge speaks on the phone side, in one table;
* ``wire``: SIP as bytes and state, without I/O: messages, stream framing,
  transactions (RFC 3261 section 17), the phone side's session descriptions;
* ``audio``: the phone leg's audio, without I/O: DTMF in every form
  providers send, G.711 and G.722, the jitter buffer, the N-1 mixer;
* ``calls``: one call without I/O: the user agent for calls from trunks
  (dialogs, RFC 3261 sections 12 to 15) and the dial-in IVR with its prompts;
* ``node``: the bridge's I/O: the SIP endpoint on UDP and TCP that hosts
  the transactions (RFC 3261 section 18) and the desk that puts the user
  agent on it, each call's RTP socket and playout clock (:mod:`sip.node.leg`),
  the prompts as audio (:mod:`sip.node.voice`), the phone's seat in the
  room (:mod:`sip.node.seat`), the bridge that puts them together
  (:mod:`sip.node.bridge`) and its metrics (:mod:`sip.node.metrics`);
* ``role``: ``wadud sip``, and the bridge inside ``wadud serve``.
"""
