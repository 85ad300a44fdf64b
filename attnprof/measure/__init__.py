"""Measurement primitives: module scopes, FLOP/byte accounting, timing, memory, devices."""
