"""Modules generated from proto/gc_mc.proto by scripts/gen_proto.py; do not edit."""
