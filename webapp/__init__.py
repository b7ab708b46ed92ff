"""The web app: server-rendered pages for owners, reviewers and admins, and the JSON API.

- :func:`create_app` builds the FastAPI app (``webapp.app``).
- :mod:`webapp.cli`: the ``web`` command and the ``users`` group.
"""

from webapp.app import create_app

__all__ = ["create_app"]
