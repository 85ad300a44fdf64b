"""Applying plans to unmodified models: the engine, its verification, one adapter per attention family."""
