"""Renderers: the only package that imports rich, apart from the CLI."""
