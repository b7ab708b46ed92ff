"""Fixtures for the web app tests; the helpers live in webapp_testkit."""

from webapp_testkit import artifacts, db_engine, engine_factory, pg_database, world  # noqa: F401
