"""Issue 16's hostile SVGs through the worker task and the ``works add`` command.

The task runs in this process against the embedded defaults (SQLite, folder
blobs, the real engine); the command runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from tests.hostile import deep_svg, turbulence_svg

HOSTILE: dict[str, Callable[[], bytes]] = {"deep": deep_svg, "turbulence": turbulence_svg}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_analyse_upload_task_marks_a_hostile_svg_failed(
    test_settings: Settings, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from storage.blobs import FolderBlobStore
    from storage.db import make_engine, make_sessionmaker, session_scope
    from storage.models import Base, Upload, UploadStatus
    from workers import runtime, tasks

    test_settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = make_engine(test_settings.resolved_database_url())
    Base.metadata.create_all(db)
    sha = FolderBlobStore(test_settings.blob_dir()).put(HOSTILE[kind]())
    with session_scope(make_sessionmaker(db)) as s:
        upload = Upload(canonical_url=f"https://pics.example/{kind}", host="pics.example",
                        image_url=f"https://pics.example/{kind}.svg", blob_sha256=sha, content_type="image/svg+xml")
        s.add(upload)
        s.flush()
        upload_id = upload.id
    monkeypatch.setattr(runtime, "_runtime", None)  # restored after the test, with _settings
    monkeypatch.setattr(runtime, "_settings", None)
    runtime.set_runtime_settings(test_settings)
    assert tasks.analyse_upload.run(upload_id) == 0
    with make_sessionmaker(db)() as s:
        row = s.get(Upload, upload_id)
        assert row is not None and row.status is UploadStatus.FAILED
        assert row.error is not None and row.error.startswith(f"https://pics.example/{kind}.svg: SVG ")
    db.dispose()


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_works_add_refuses_a_hostile_svg_with_a_clear_error(
    test_settings: Settings, tmp_path: Path, kind: str
) -> None:
    def artwatch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workers", *args], check=False, capture_output=True, text=True,
                              env=dict(os.environ), timeout=120)

    assert artwatch("init").returncode == 0
    path = tmp_path / f"{kind}.svg"
    path.write_bytes(HOSTILE[kind]())
    proc = artwatch("works", "add", str(path), "--owner", "o@example.com", "--create-owner")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and f"{kind}.svg: SVG " in proc.stderr
    assert "no works registered" in artwatch("works", "list").stdout
