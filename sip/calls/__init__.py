"""One phone call through the bridge, without I/O: the dial-in IVR and its prompts."""
