"""Sphinx configuration: the API reference built from the docstrings (``make docs``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "invprox"
author = "the invprox developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
