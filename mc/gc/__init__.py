"""The GC peer: its calls to us (gRPC server, token check) and ours to it (client, liaison)."""
