"""Test doubles of the MC's peers (a real-network fake GC) for our tests, the demo and users."""
