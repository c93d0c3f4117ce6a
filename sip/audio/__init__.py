"""The phone leg's audio, without I/O: DTMF, codecs, jitter buffer, mixer."""
