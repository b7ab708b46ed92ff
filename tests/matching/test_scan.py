"""`artwatch scan` and `artwatch index rebuild` (the click commands), end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import delete, select

from storage.db import make_engine
from storage.models import Work


def _picture(seed: int, w: int = 400, h: int = 300) -> np.ndarray:
    """Textured enough for local features: smooth colours plus random blocks."""
    r = np.random.default_rng(seed)
    base = Image.fromarray(r.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    a = np.asarray(base).copy()
    for _ in range(40):
        x, y = int(r.integers(0, w - 30)), int(r.integers(0, h - 30))
        a[y : y + int(r.integers(5, 30)), x : x + int(r.integers(5, 30))] = r.integers(0, 256, 3)
    return a


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    d = tmp_path / "ds"
    (d / "works").mkdir(parents=True)
    (d / "uploads").mkdir()
    with (d / "works.jsonl").open("w") as f:
        for i in range(3):
            Image.fromarray(_picture(i)).save(d / "works" / f"w{i}.png")
            f.write(json.dumps({"id": f"w{i}", "file": f"works/w{i}.png", "kind": "artwork", "owner": f"o{i % 2}",
                                "title": f"t{i}"}) + "\n")
    with (d / "uploads.jsonl").open("w") as f:
        for i in range(3):  # cropped, recompressed copies
            Image.fromarray(_picture(i)[20:280, 30:370]).save(d / "uploads" / f"u{i}.jpg", quality=70)
            f.write(json.dumps({"id": f"u{i}", "file": f"uploads/u{i}.jpg"}) + "\n")
        Image.fromarray(_picture(99)).save(d / "uploads" / "u9.jpg")
        f.write(json.dumps({"id": "u9", "file": "uploads/u9.jpg"}) + "\n")
        (d / "uploads" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
        f.write(json.dumps({"id": "ubad", "file": "uploads/bad.jpg"}) + "\n")
    return d


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("ARTWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ARTWATCH_CONFIG", raising=False)
    # Tests run the production embedder with random weights (pretrained=None).
    monkeypatch.setenv("ARTWATCH_MATCHING__CLIP_PRETRAINED", "")
    return CliRunner()


def _register(dataset: Path) -> None:
    """Create the schema and register the dataset's works the way `works import` does."""
    from config.settings import load_settings
    from matching import build_engine
    from registry.service import ensure_owner, register_work
    from storage.blobs import FolderBlobStore
    from storage.db import make_sessionmaker, session_scope
    from storage.models import Base

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(db)
    engine = build_engine(settings)
    blobs = FolderBlobStore(settings.blob_dir())
    with session_scope(make_sessionmaker(db)) as s:
        for line in (dataset / "works.jsonl").read_text().splitlines():
            rec = json.loads(line)
            owner = ensure_owner(s, external_id=rec["owner"])
            register_work(s, blobs, engine, owner_id=owner.id, data=(dataset / rec["file"]).read_bytes(),
                          filename=Path(rec["file"]).name, title=rec["title"], kind=rec["kind"],
                          external_id=rec["id"])
    db.dispose()


def _run(runner: CliRunner, *args: str) -> str:
    from matching.cli import scan
    from registry.cli import index_group

    cmd = {"scan": scan, "index": index_group}[args[0]]
    res = runner.invoke(cmd, list(args[1:]), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _predictions(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_scan_writes_predictions(cli: CliRunner, dataset: Path, tmp_path: Path, workers: str) -> None:
    _register(dataset)
    out = tmp_path / "pred.jsonl"
    from matching.cli import scan

    res = cli.invoke(scan,
                     ["--no-embedder", "--workers", workers, "--manifest", str(dataset / "uploads.jsonl"),
                      "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    preds = _predictions(out)
    for p in preds:
        assert set(p) == {"upload", "work", "score", "match"}
        assert isinstance(p["score"], float) and isinstance(p["match"], bool)
    decided = {(p["upload"], p["work"]) for p in preds if p["match"]}
    assert decided == {("u0", "w0"), ("u1", "w1"), ("u2", "w2")}
    assert not any(p["upload"] in ("u9", "ubad") and p["match"] for p in preds)
    assert "1 unreadable" in res.output and "bad.jpg" in res.output
    assert "scanned 5 uploads" in res.output
    assert "scanning: 5/5 (100%)" in res.output  # progress on stderr (not a terminal here)
    if workers == "2":  # the pool runs on jemalloc; this process's environment is left as it was
        assert "scan: 2 worker processes on jemalloc" in res.output
        assert "jemalloc" not in os.environ.get("LD_PRELOAD", "")
    assert not (tmp_path / "pred.jsonl.part").exists()


def test_scan_with_sparse_candidates(cli: CliRunner, dataset: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``matching.candidates = "sparse"``: registration writes the works' words to the
    index under DATA_DIR/index, and each scan process takes its candidates from there."""
    monkeypatch.setenv("ARTWATCH_MATCHING__CANDIDATES", "sparse")
    # Registered without the descriptor, as `--no-embedder` scans: the index's vectors then agree.
    monkeypatch.setenv("ARTWATCH_MATCHING__DESCRIPTOR", "")
    _register(dataset)
    assert (tmp_path / "data" / "index" / "works" / "points.sqlite").exists()
    out = tmp_path / "pred.jsonl"
    from matching.cli import scan

    res = cli.invoke(scan, ["--no-embedder", "--workers", "2", "--manifest", str(dataset / "uploads.jsonl"),
                            "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    decided = {(p["upload"], p["work"]) for p in _predictions(out) if p["match"]}
    assert decided == {("u0", "w0"), ("u1", "w1"), ("u2", "w2")}


def test_scan_whose_workers_cannot_build_an_engine_stops_with_the_reason(
        cli: CliRunner, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered with the descriptor on, the index holds its vectors; a sparse-candidate scan
    with ``--no-embedder`` opens it with other ones. Each worker's engine then refuses, and
    the scan must say so (a pool whose initializer raised would restart it forever)."""
    monkeypatch.setenv("ARTWATCH_MATCHING__CANDIDATES", "sparse")
    _register(dataset)
    from matching.cli import scan

    res = CliRunner().invoke(scan, ["--no-embedder", "--workers", "2", "--manifest", str(dataset / "uploads.jsonl"),
                                    "--out", str(dataset / "pred.jsonl")])
    assert res.exit_code != 0
    assert "cannot build the matching engine" in res.output and "was built for vectors" in res.output
    assert "Use those settings" in res.output  # the advice names both ways out


def test_scan_rejects_a_bad_manifest(cli: CliRunner, tmp_path: Path) -> None:
    from matching.cli import scan

    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "u1"}\n')
    res = cli.invoke(scan, ["--manifest", str(m), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code != 0
    assert "m.jsonl:1: expected" in res.output


def test_index_rebuild_from_database(cli: CliRunner, dataset: Path, tmp_path: Path) -> None:
    from config.settings import load_settings
    from matching import build_engine

    _register(dataset)
    settings = load_settings()
    db = make_engine(settings.resolved_database_url())
    with db.begin() as conn:
        w2 = conn.execute(select(Work.id).where(Work.external_id == "w2")).scalar_one()
        conn.execute(delete(Work).where(Work.id == w2))  # behind the engine's back
    db.dispose()
    engine = build_engine(settings)
    assert w2 in engine.index.work_ids
    out = _run(cli, "index", "rebuild")
    assert "2 works indexed, 1 stale removed, 0 failed" in out
    engine = build_engine(settings)
    assert w2 not in engine.index.work_ids and len(engine.index.work_ids) == 2
    assert engine.analyse((dataset / "uploads" / "u0.jpg").read_bytes())[0].match is True
    assert all(c.work_id != w2 for c in engine.analyse((dataset / "uploads" / "u2.jpg").read_bytes()))


def test_index_status_shows_the_vocabulary_a_rebuild_replaces(cli: CliRunner, dataset: Path) -> None:
    assert json.loads(_run(cli, "index", "status", "--json")) == {"vocabulary": None, "works": 0}
    _register(dataset)
    before = json.loads(_run(cli, "index", "status", "--json"))
    assert before["works"] == 3 and isinstance(before["vocabulary"], str) and before["vocabulary"], before
    _run(cli, "index", "rebuild")
    after = json.loads(_run(cli, "index", "status", "--json"))
    assert after["works"] == 3 and after["vocabulary"] not in (None, before["vocabulary"]), (before, after)
    assert _run(cli, "index", "status") == f"vocabulary: {after['vocabulary']}; works: 3\n"


def test_index_rebuild_reports_a_missing_blob(cli: CliRunner, dataset: Path) -> None:
    from config.settings import load_settings
    from registry.cli import index_group

    _register(dataset)
    settings = load_settings()
    db = make_engine(settings.resolved_database_url())
    with db.begin() as conn:
        sha = conn.execute(select(Work.blob_sha256).where(Work.external_id == "w1")).scalar_one()
    db.dispose()
    from storage.blobs import FolderBlobStore

    FolderBlobStore(settings.blob_dir()).path(sha).unlink()
    res = cli.invoke(index_group, ["rebuild"])
    assert res.exit_code == 1
    assert "2 works indexed, 0 stale removed, 1 failed" in res.output
    assert "w1.png" in res.output


def test_calibrate_needs_registered_works(cli: CliRunner) -> None:
    from config.settings import load_settings
    from matching.cli import calibrate
    from storage.models import Base

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(db)
    db.dispose()
    res = cli.invoke(calibrate, ["--target-precision", "0.99"])
    assert res.exit_code == 1
    assert "no registered works" in res.output


def test_calibrate_dry_run_keeps_the_model_and_reset_returns_to_the_built_in(cli: CliRunner, dataset: Path) -> None:
    """`--dry-run` fits and prints without writing; `--reset` removes a calibration, and an
    engine that read it goes back to the built-in score."""
    from config.settings import load_settings
    from matching import build_engine
    from matching.cli import calibrate
    from matching.engine import ScoreModel

    _register(dataset)
    settings = load_settings()
    cal_file = settings.data_dir / "calibration.json"
    res = cli.invoke(calibrate, ["--dry-run"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "dry run: nothing is written" in res.output
    fitted = json.loads(res.stdout.strip().splitlines()[-1])
    assert fitted["threshold"] == 0.5 and len(fitted["local"]) == 5
    assert not cal_file.exists()
    # how little the calibration set can say about rare false positives
    assert f"rests on {fitted['negatives']} wrong pairs" in res.stderr
    assert f"{min(1.0, 3 / fitted['negatives']):.1%} from zero" in res.stderr

    res = cli.invoke(calibrate, ["--reset"], catch_exceptions=False)
    assert res.exit_code == 0 and "no calibration at" in res.output

    built_in = ScoreModel(threshold=settings.matching.threshold)
    cal_file.write_text(json.dumps({**fitted, "local": [-1.0, 1.0, 1.0, 1.0, 1.0], "threshold": 0.7}))
    engine = build_engine(settings)
    assert engine.model.local == (-1.0, 1.0, 1.0, 1.0, 1.0) and engine.model.threshold == 0.7
    res = cli.invoke(calibrate, ["--reset"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"removed the calibration at {cal_file}" in res.output
    assert not cal_file.exists()
    assert engine.model.local == built_in.local and engine.model.threshold == built_in.threshold

    res = cli.invoke(calibrate, ["--reset", "--dry-run"])
    assert res.exit_code == 2 and "do not go together" in res.output


def test_scan_records_hostile_svgs_as_errors_and_goes_on(cli: CliRunner, dataset: Path, tmp_path: Path) -> None:
    """Issue 16: one deeply nested SVG aborted the whole scan with no predictions written."""
    from matching.cli import scan
    from tests.hostile import deep_svg, turbulence_svg

    _register(dataset)
    (dataset / "uploads" / "deep.svg").write_bytes(deep_svg())
    (dataset / "uploads" / "turb.svg").write_bytes(turbulence_svg())
    manifest = dataset / "uploads.jsonl"
    with manifest.open("a") as f:
        f.write(json.dumps({"id": "udeep", "file": "uploads/deep.svg"}) + "\n")
        f.write(json.dumps({"id": "uturb", "file": "uploads/turb.svg"}) + "\n")
    out = tmp_path / "pred.jsonl"
    res = cli.invoke(scan, ["--no-embedder", "--workers", "1", "--manifest", str(manifest), "--out", str(out)],
                     catch_exceptions=False)
    assert res.exit_code == 0, res.output
    decided = {(p["upload"], p["work"]) for p in _predictions(out) if p["match"]}
    assert decided == {("u0", "w0"), ("u1", "w1"), ("u2", "w2")}
    assert "3 unreadable" in res.output
    assert "deep.svg: SVG nests elements deeper than" in res.output
    # Past its CPU budget (or, on a machine too loaded to give it 2 s of CPU in time, its deadline).
    assert "turb.svg: SVG needs more than 2 s of CPU" in res.output or "turb.svg: SVG took longer" in res.output
