"""Renderers: the only package that imports rich."""

# Loading the renderers installs the progress bar into the hook of the measuring loops.
from attnprof.report import progress as progress
