"""The participants peer: WebTransport over QUIC on the reactor, signalling, meeting tokens."""
