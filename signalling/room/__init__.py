"""One call room without I/O: its core (who is in it, what is published, who
agreed to a recording) and the outputs it hands its adapter."""
