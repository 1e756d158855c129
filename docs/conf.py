"""Sphinx configuration: the API from the docstrings (autodoc, napoleon), the README's sections
and the notebooks in their stored, output-free form (MyST-NB, never executed here)."""

import os
from importlib import metadata

os.environ.setdefault("KERAS_BACKEND", "jax")  # ife_jax.keras documents the JAX backend

project = "ife-jax"
author = "ife-jax contributors"
copyright = "the ife-jax contributors, Apache License 2.0"
release = metadata.version("ife-jax")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_nb",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "notebooks/.ipynb_checkpoints"]
root_doc = "index"

nb_execution_mode = "off"  # notebooks are executed by the test suite, not by the docs build
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # Keras' and Flax's own docstrings are not reStructuredText
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" of a Flax module as fields, not a second description

html_theme = "alabaster"
html_title = f"ife-jax {release}"
