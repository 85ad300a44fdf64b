"""Renderers: the only package that imports rich."""
