"""The draft_notice task with an owner template that runs away only on real facts."""

from __future__ import annotations

from sqlalchemy import select

from config.settings import Settings
from notices.drafting import TEMPLATE_FAILED, save_owner_template
from notices.render import TEMPLATE_DIR
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import AuditEvent, Notice
from tests.notices import factory as f
from workers import migrate

# Passes the gate (two sample items); with three real items it would loop 8e9 times.
RUNAWAY = ("{% if items|length > 2 %}{% for a in items * 2000 %}{% for b in items * 2000 %}"
           "{% for c in items * 2000 %}x{% endfor %}{% endfor %}{% endfor %}{% endif %}\n"
           + (TEMPLATE_DIR / "dmca.txt.j2").read_text())


def test_draft_task_ends_cleanly_and_leaves_the_reason_for_the_reviewer(test_settings: Settings) -> None:
    from workers import tasks
    from workers.app import configure
    from workers.runtime import set_runtime_settings

    test_settings.data_dir.mkdir(parents=True)
    engine = make_engine(test_settings.resolved_database_url())
    migrate.init_database(engine, test_settings)
    set_runtime_settings(test_settings)
    configure(test_settings)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        acc = f.owner(s)
        save_owner_template(s, acc.id, "dmca", "text", RUNAWAY, acc.email)
        w = f.work(s, acc)
        matches = [f.match(s, f.upload(s, f"https://i.imgur.com/{k}.png"), w).id for k in range(3)]
    ids = {tasks.draft_notice.apply(args=[m]).get() for m in matches}  # the third: over budget
    assert len(ids) == 1 and None not in ids
    with session_scope(sessions) as s:
        notice = s.scalar(select(Notice))
        assert notice is not None and TEMPLATE_FAILED in notice.flags
        assert all(f"https://i.imgur.com/{k}.png" in notice.body_text for k in range(3))
        failures = s.scalars(select(AuditEvent).where(AuditEvent.action == TEMPLATE_FAILED))
        reasons = [e.detail["reason"] for e in failures]
        assert len(reasons) == 1 and "over budget" in reasons[0] and "line 1" in reasons[0]
    engine.dispose()
