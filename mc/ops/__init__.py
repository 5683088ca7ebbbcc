"""The operator: HTTP probes, metrics, signals, logs, health."""
