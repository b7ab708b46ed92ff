"""Models and migrations on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

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
