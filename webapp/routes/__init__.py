"""Routers: one module per audience (auth, owner, review, admin) plus the JSON API."""
