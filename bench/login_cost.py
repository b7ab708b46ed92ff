"""Median time of a wrong-password login for unknown and known accounts.

    PYTHONPATH=TREE python bench/login_cost.py [TRIALS]

Each trial logs in from a fresh client address (so the throttle never
answers instead), through the real app in a TestClient, on a temporary
SQLite data folder. Equal medians mean the response time does not tell
which accounts exist.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "webapp"))
    from fastapi.testclient import TestClient
    from webapp_testkit import csrf_from, make_settings

    from storage.blobs import FolderBlobStore
    from storage.db import make_engine, make_sessionmaker
    from storage.models import Account, Base, Role
    from webapp import create_app
    from webapp.security import hash_password

    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    settings = make_settings(Path(tempfile.mkdtemp()))
    engine = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        digest = hash_password("correct horse battery")
        s.add_all(Account(email=f"ann{i}@example.com", role=Role.OWNER, password_hash=digest) for i in range(trials))
        s.commit()
    app = create_app(settings, sessions=sessions, blobs=FolderBlobStore(settings.blob_dir()), engine=object())
    times: dict[str, list[float]] = {"unknown": [], "known": []}
    for i in range(trials):
        for kind, email in (("unknown", f"nobody{i}@example.com"), ("known", f"ann{i}@example.com")):
            client = TestClient(app, follow_redirects=False, client=(f"10.{i}.{len(kind)}.1", 5000))
            token = csrf_from(client.get("/login").text)
            t0 = time.perf_counter()
            r = client.post("/login", data={"email": email, "password": "wrong", "csrf_token": token})
            times[kind].append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 400, r.status_code
    for kind, ms in times.items():
        print(f"{kind}: median {statistics.median(ms):.1f} ms, min {min(ms):.1f} ms")


if __name__ == "__main__":
    main()
