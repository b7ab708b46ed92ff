"""Fixtures for the web app tests; the helpers live in webapp_testkit."""

from review_kit import inbox, pages, send_world  # noqa: F401
from webapp_testkit import artifacts, db_engine, engine_factory, pg_database, world  # noqa: F401
