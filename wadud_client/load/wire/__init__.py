"""What the load tester speaks on the wire: ICE, DTLS-SRTP, RTP and RTCP
layouts, session descriptions, and the bandwidth feedback a browser sends."""
