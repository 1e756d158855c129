"""Optional dependencies: which extra of ``ife-jax`` installs what a subpackage imports.

The core install (``pip install ife-jax``) is JAX, Flax, Optax and NumPy: enough for the IFE ops
and the Flax models. Subpackages that need more import it under :func:`missing_extra`, so that a
missing package fails with one line naming the extra that installs it.
"""

from __future__ import annotations


def missing_extra(err: ModuleNotFoundError, extra: str) -> ImportError:
    """The error to raise (``from None``) when a package of the extra ``extra`` is missing.

    Args:
      err: the ``ModuleNotFoundError`` of the failed import.
      extra: the extra of ``ife-jax`` that installs the missing package (``"data"``, ...).

    Returns:
      An ``ImportError`` whose one-line message names the missing package and the extra.

    Example::

        try:
            import cv2  # noqa: F401
        except ModuleNotFoundError as err:
            raise missing_extra(err, "data") from None
    """
    package = (err.name or "a package").split(".")[0]
    return ImportError(
        f"{package!r} is not installed; it comes with the {extra!r} extra: "
        f"pip install 'ife-jax[{extra}]'"
    )
