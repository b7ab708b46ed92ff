"""Drafting cost against rendering cost (not collected by pytest).

Run from the repository root: ``python tests/notices/bench_drafting.py 100``.
Baseline: rendering and validating a finished notice with N items. Measured in
the same run: ``draft_for_match`` adding each of N matches to one notice on
SQLite (re-render and commit included), and re-running it for each match (the
idempotent path a retried task takes).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import select

from config.settings import NoticeSettings
from notices.drafting import content_for_notice, draft_for_match
from notices.render import render_notice
from notices.validate import missing_in_parts
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Base, Notice
from tests.notices import factory as f


def main(n: int) -> None:
    folder = tempfile.mkdtemp()
    engine = make_engine(f"sqlite:///{folder}/bench.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        acc = f.owner(s)
        w = f.work(s, acc)
        ids = [f.match(s, f.upload(s, f"https://i.imgur.com/{k}.png"), w).id for k in range(n)]

    def each_match() -> float:
        t0 = time.perf_counter()
        for mid in ids:
            with session_scope(sessions) as s:
                draft_for_match(s, mid, NoticeSettings())
        return (time.perf_counter() - t0) / n

    t_draft = each_match()
    with session_scope(sessions) as s:
        notice = s.scalar(select(Notice))
        assert notice is not None
        parts = content_for_notice(s, notice)
    t0 = time.perf_counter()
    for _ in range(20):
        r = render_notice(parts)
        assert missing_in_parts(parts, r.text, r.html) == []
    t_render = (time.perf_counter() - t0) / 20
    t_rerun = each_match()
    print(f"items={n} render+validate full notice: {t_render * 1000:.1f} ms (baseline 1.00x)")
    print(f"draft_for_match, new match (re-render, commit): {t_draft * 1000:.1f} ms ({t_draft / t_render:.2f}x)")
    print(f"draft_for_match, task re-run (no-op): {t_rerun * 1000:.1f} ms ({t_rerun / t_render:.2f}x)")
    engine.dispose()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
