"""Models and migrations on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import (
    Account,
    AuditEvent,
    Match,
    Notice,
    NoticeItem,
    NoticeState,
    Source,
    Upload,
    Work,
    WorkKind,
)
from workers import migrate


@pytest.fixture
def sessions(database_url: str, test_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    migrate.init_database(engine, test_settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_migrations_create_every_model_table(database_url: str, test_settings: Settings) -> None:
    from storage.models import Base

    engine = make_engine(database_url)
    migrate.init_database(engine, test_settings)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    migrate.require_initialised(engine, test_settings)
    engine.dispose()


def test_migrations_match_the_models(database_url: str, test_settings: Settings) -> None:
    """alembic's autogenerate finds nothing to add: the migrations are complete."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storage.models import Base

    engine = make_engine(database_url)
    migrate.init_database(engine, test_settings)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_head_revision_constant_is_alembics_head(test_settings: object) -> None:
    """Commands check the schema against ``HEAD_REVISION`` without loading Alembic."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert script.get_current_head() == migrate.HEAD_REVISION


def test_an_old_schema_revision_asks_for_an_upgrade(tmp_path: Path, test_settings: Settings) -> None:
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate.init_database(engine, test_settings)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    with pytest.raises(migrate.NotInitialised, match="init --upgrade"):
        migrate.require_initialised(engine, test_settings)
    engine.dispose()


def test_second_init_changes_nothing(database_url: str, test_settings: Settings) -> None:
    engine = make_engine(database_url)
    migrate.init_database(engine, test_settings)
    with session_scope(make_sessionmaker(engine)) as s:
        s.add(Account(email="keep@example.com"))
    with pytest.raises(migrate.AlreadyInitialised, match="nothing changed"):
        migrate.init_database(engine, test_settings)
    with session_scope(make_sessionmaker(engine)) as s:
        assert s.scalar(select(Account.email)) == "keep@example.com"
    engine.dispose()


def test_full_object_graph_round_trips(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        owner = Account(email="artist@example.com", legal_name="A. Artist")
        s.add(owner)
        s.flush()
        work = Work(owner_id=owner.id, title="Dusk", kind=WorkKind.LOGO, blob_sha256="a" * 64,
                    licensed_sites=["shop.example"])
        src = Source(name="m", kind="mastodon", url="https://m.example", params={"timeline": "public"})
        s.add_all([work, src])
        s.flush()
        up = Upload(canonical_url="https://m.example/media/1.jpg", source_id=src.id, blob_sha256="b" * 64,
                    headers={"content-type": "image/jpeg"})
        s.add(up)
        s.flush()
        m = Match(upload_id=up.id, work_id=work.id, owner_id=owner.id, score=0.97,
                  signals={"pdq": 0.9}, region=[[0, 0], [10, 0], [10, 10], [0, 10]])
        s.add(m)
        s.flush()
        n = Notice(owner_id=owner.id, host="m.example")
        s.add(n)
        s.flush()
        s.add(NoticeItem(notice_id=n.id, match_id=m.id, work_id=work.id, url=up.canonical_url))
        s.add(AuditEvent(actor="reviewer@example.com", action="approve", entity="notice", entity_id=n.id))
    with session_scope(sessions) as s:
        stored = s.scalar(select(Match))
        assert stored is not None and stored.region is not None
        assert stored.region[2] == [10, 10] and stored.signals == {"pdq": 0.9}
        assert stored.work.licensed_sites == ["shop.example"]
        notice = s.scalar(select(Notice))
        assert notice is not None and notice.state is NoticeState.DRAFT and len(notice.items) == 1


@pytest.mark.parametrize("dupe", ["match", "notice_item", "upload"])
def test_natural_keys_are_unique(sessions: sessionmaker[Session], dupe: str) -> None:
    with session_scope(sessions) as s:
        owner = Account(email="o@example.com")
        s.add(owner)
        s.flush()
        work = Work(owner_id=owner.id, blob_sha256="a" * 64)
        up = Upload(canonical_url="https://x.example/1.jpg")
        s.add_all([work, up])
        s.flush()
        m = Match(upload_id=up.id, work_id=work.id, owner_id=owner.id, score=1.0)
        n = Notice(owner_id=owner.id, host="x.example")
        s.add_all([m, n])
        s.flush()
        s.add(NoticeItem(notice_id=n.id, match_id=m.id, work_id=work.id, url=up.canonical_url))
        ids = (owner.id, work.id, up.id, m.id, n.id)
    owner_id, work_id, up_id, m_id, n_id = ids
    with pytest.raises(IntegrityError), session_scope(sessions) as s:
        if dupe == "match":
            s.add(Match(upload_id=up_id, work_id=work_id, owner_id=owner_id, score=0.5))
        elif dupe == "notice_item":
            s.add(NoticeItem(notice_id=n_id, match_id=m_id, work_id=work_id, url="https://x.example/1.jpg"))
        else:
            s.add(Upload(canonical_url="https://x.example/1.jpg"))


def test_upgrade_to_0002_scopes_work_ids_per_owner_and_keeps_the_data(
    database_url: str, test_settings: Settings
) -> None:
    """An existing 0001 database with works, matches and notice items upgrades in place.

    Nothing is lost (on SQLite the works table is rebuilt, and a cascade from
    the old table's drop would empty matches and notice_items), and afterwards
    two owners may both call a work "logo" while one owner still may not."""
    from sqlalchemy import text

    engine = make_engine(database_url)
    migrate.upgrade_to(engine, "0001")
    now = "2026-01-01 00:00:00+00:00"
    with engine.begin() as conn:
        for aid, email in ((1, "ann@example.com"), (2, "bob@example.com")):
            conn.execute(text("INSERT INTO accounts (id, email, display_name, role, legal_name, postal_address, "
                              "phone, alert_mode, created_at) VALUES (:id, :e, '', 'owner', '', '', '', 'instant', "
                              ":now)"), {"id": aid, "e": email, "now": now})
        conn.execute(text("INSERT INTO works (id, external_id, owner_id, title, kind, blob_sha256, filename, "
                          "registration_number, licensed_sites, created_at) VALUES (1, 'logo', 1, 'Ann logo', "
                          "'logo', :sha, 'a.png', '', '[]', :now)"), {"sha": "a" * 64, "now": now})
        conn.execute(text("INSERT INTO uploads (id, canonical_url, host, page_url, image_url, final_url, post_id, "
                          "author, post_text, headers, content_type, status, created_at) VALUES (1, "
                          "'https://pics.example/1.jpg', 'pics.example', '', '', '', '', '', '', '{}', '', "
                          "'analysed', :now)"), {"now": now})
        conn.execute(text("INSERT INTO matches (id, upload_id, work_id, owner_id, score, signals, status, "
                          "status_reason, created_at) VALUES (1, 1, 1, 1, 0.9, '{}', 'new', '', :now)"),
                     {"now": now})
        conn.execute(text("INSERT INTO notices (id, owner_id, host, law, state, recipient, flags, subject, "
                          "body_text, body_html, edited, fair_use, reject_reason, resolution, sent_via, created_at, "
                          "updated_at) VALUES (1, 1, 'pics.example', 'dmca', 'draft', '', '[]', '', '', '', "
                          "false, '{}', '', '', '', :now, :now)"), {"now": now})
        conn.execute(text("INSERT INTO notice_items (id, notice_id, match_id, work_id, url, online) VALUES "
                          "(1, 1, 1, 1, 'https://pics.example/1.jpg', '')"))
    # The old schema: one "logo" in the whole registry.
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO works (external_id, owner_id, title, kind, blob_sha256, filename, "
                          "registration_number, licensed_sites, created_at) VALUES ('logo', 2, 'Bob logo', "
                          "'logo', :sha, 'b.png', '', '[]', :now)"), {"sha": "b" * 64, "now": now})

    assert migrate.init_database(engine, test_settings, upgrade=True) == "upgraded"
    migrate.require_initialised(engine, test_settings)

    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        work = s.get(Work, 1)
        assert work is not None and (work.external_id, work.owner_id, work.title) == ("logo", 1, "Ann logo")
        assert [m.work_id for m in s.scalars(select(Match))] == [1]
        assert [(i.work_id, i.match_id) for i in s.scalars(select(NoticeItem))] == [(1, 1)]
        s.add(Work(external_id="logo", owner_id=2, title="Bob logo", kind=WorkKind.LOGO, blob_sha256="b" * 64))
    with session_scope(sessions) as s:
        owners = sorted(s.scalars(select(Work.owner_id).where(Work.external_id == "logo")))
        assert owners == [1, 2]
    with pytest.raises(IntegrityError), session_scope(sessions) as s:
        s.add(Work(external_id="logo", owner_id=1, title="again", kind=WorkKind.LOGO, blob_sha256="c" * 64))
    if engine.dialect.name == "sqlite":  # foreign keys are back on after the migration
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
