"""cai: Constitutional AI and RLAIF from a written constitution.

The public surface is small: :class:`Constitution` / :func:`load_constitution`, a backend from
:func:`make_backend`, :func:`critique_revise`, and the ``cai`` command line.
"""

__version__ = "0.1.0"

from .constitution import Constitution, load_constitution  # noqa: E402

__all__ = ["Constitution", "load_constitution", "__version__"]
