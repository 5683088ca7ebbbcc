"""The Redis peer: fenced ownership of meetings in the fleet's shared Redis."""
