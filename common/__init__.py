"""Shared core: codes, decoder, latency analysis, wire format, configuration (numpy-only except wire/transport)."""
