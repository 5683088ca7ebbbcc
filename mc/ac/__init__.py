"""The Auth Controller peer: the MC's own service identity and the service
tokens of the calls it receives."""
