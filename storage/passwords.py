"""How account passwords are hashed (argon2id); ``webapp.security`` verifies them.

Kept beside the models so anything that creates accounts (the web app, the
``users`` command, ``artwatch run --demo``) hashes the same way without
importing the web app.
"""

from __future__ import annotations

from argon2 import PasswordHasher

__all__ = ["PASSWORD_HASHER", "hash_password"]

# Parameters near argon2-cffi's RFC 9106 "low memory" profile, cheap enough for
# tests and a small server; the hash string records them, so raising them later
# still verifies old hashes.
PASSWORD_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def hash_password(password: str) -> str:
    return PASSWORD_HASHER.hash(password)
