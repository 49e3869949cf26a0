"""Sphinx configuration of fisherkit's documentation (built in CI with warnings as errors)."""

import fisherkit

project = "fisherkit"
release = version = fisherkit.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures show them; the docstrings explain shapes and scaling
exclude_patterns = ["_build", "pypi.md"]
html_theme = "alabaster"
