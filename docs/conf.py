"""Sphinx configuration of bgtask's reference (``sphinx-build -W docs docs/_build``)."""

from __future__ import annotations

import os
import sys

# The checkout's package, not an installed copy of another version.
sys.path.insert(0, os.path.abspath(".."))

import bgtask  # noqa: E402

project = "bgtask"
author = "the bgtask authors"
copyright = "the bgtask authors"
version = release = bgtask.__version__

extensions = ["sphinx.ext.autodoc"]
# Signatures as written; the types go into the description, where long unions read better.
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
