"""Back-scan progress on the work page, and editing a work (title, kind, licensed sites)."""

from __future__ import annotations

from sqlalchemy import select
from webapp_testkit import World, csrf_from, logo_png, product_shot

from storage.db import session_scope
from storage.models import AuditEvent, Match, Role, Upload, UploadStatus, WebJob, Work, WorkKind


def _stored_upload(world: World, data: bytes, url: str) -> int:
    """An upload crawled and analysed before any work it copies was registered."""
    with session_scope(world.sessions) as s:
        up = Upload(canonical_url=url, host="pics.example", page_url=url, image_url=url,
                    blob_sha256=world.blobs.put(data), content_type="image/jpeg", status=UploadStatus.ANALYSED,
                    author="copier")
        s.add(up)
        s.flush()
        return up.id


def _register_on_the_web(world: World, email: str, data: bytes, title: str) -> tuple[int, str]:
    client = world.client(email)
    token = csrf_from(client.get("/works/new").text)
    r = client.post("/works", data={"csrf_token": token, "title": title, "kind": "logo"},
                    files={"file": (f"{title}.png", data, "image/png")})
    assert r.status_code == 303, r.text
    with world.sessions() as s:
        wid = s.scalars(select(Work.id).where(Work.title == title)).one()
    return wid, r.headers["location"]


def test_registering_on_the_web_back_scans_stored_uploads_and_the_page_shows_progress(world: World) -> None:
    from registry.backscan import run_batch

    world.account("ann@example.com")
    world.account("bob@example.com")
    world.account("rita@example.com", role=Role.REVIEWER)
    shot, _ = product_shot(logo_png(3))
    copy_id = _stored_upload(world, shot, "https://pics.example/p/1")
    _stored_upload(world, product_shot(logo_png(40, "ZED"), seed=9)[0], "https://pics.example/p/2")
    wid, location = _register_on_the_web(world, "ann@example.com", logo_png(3), "Ann mark")
    with world.sessions() as s:
        job = s.scalars(select(WebJob).where(WebJob.kind == "backscan")).one()
        job_id, ann_id = job.id, job.owner_id
        assert (job.state, job.total, job.done) == ("queued", 2, 0)
    client = world.client("ann@example.com")
    page = client.get(location).text
    assert "checks the uploads already stored" in page
    assert f'data-poll="/jobs/{job_id}/progress"' in page and "checked 0 of 2 stored uploads, found 0" in page
    # A worker runs the batches (the task body, in-process).
    with session_scope(world.sessions) as s:
        first = run_batch(s, world.blobs, world.engine, job_id, batch=1)
        assert first is not None and first.more
    frag = client.get(f"/jobs/{job_id}/progress").text
    assert 'data-state="running"' in frag and "checked 1 of 2 stored uploads" in frag
    with session_scope(world.sessions) as s:
        assert run_batch(s, world.blobs, world.engine, job_id, batch=1) is not None
    page = client.get(f"/works/{wid}").text
    assert "checked 2 of 2 stored uploads, found 1" in page and 'data-state="done"' in page
    assert "https://pics.example/p/1" in page  # the match is listed on the work's page
    with world.sessions() as s:
        m = s.scalars(select(Match)).one()
        assert (m.upload_id, m.work_id, m.owner_id) == (copy_id, wid, ann_id)
    # Isolation: the job and the match are Ann's; Bob sees neither, staff see the work's progress.
    bob = world.client("bob@example.com")
    assert bob.get(f"/jobs/{job_id}/progress").status_code == 404
    assert bob.get(f"/works/{wid}").status_code == 404
    assert bob.get(f"/matches/{m.id}").status_code == 404
    staff = world.client("rita@example.com").get(f"/works/{wid}").text
    assert "checked 2 of 2 stored uploads, found 1" in staff and "data-poll" not in staff


def test_a_work_registered_with_nothing_stored_shows_no_back_scan(world: World) -> None:
    world.account("ann@example.com")
    _wid, location = _register_on_the_web(world, "ann@example.com", logo_png(5), "Lonely")
    page = world.client("ann@example.com").get(location).text
    assert "Registered." in page and "stored uploads" not in page
    with world.sessions() as s:
        assert s.scalars(select(WebJob)).all() == []


def test_owner_edits_title_kind_and_licensed_sites(world: World) -> None:
    ann = world.account("ann@example.com")
    wid = world.work(ann, logo_png(7), title="Old title", kind="logo", indexed=True)
    client = world.client("ann@example.com")
    page = client.get(f"/works/{wid}").text
    assert f'href="/works/{wid}/edit"' in page
    form = client.get(f"/works/{wid}/edit").text
    assert 'value="Old title"' in form
    token = csrf_from(form)
    # Without the token: refused, nothing changed.
    assert client.post(f"/works/{wid}/edit", data={"title": "X", "kind": "logo"}).status_code == 403
    r = client.post(f"/works/{wid}/edit", data={"csrf_token": token, "title": "New title", "kind": "artwork",
                                                "licensed_sites": "shop.example\n@acme"})
    assert r.status_code == 303 and r.headers["location"] == f"/works/{wid}?updated=1"
    page = client.get(r.headers["location"]).text
    assert "Saved." in page and "New title" in page and "shop.example" in page and "@acme" in page
    with world.sessions() as s:
        work = s.get(Work, wid)
        assert work is not None
        assert (work.title, work.kind, work.licensed_sites) == ("New title", WorkKind.ARTWORK,
                                                                 ["shop.example", "@acme"])
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "work_edited")).one()
        assert event.entity_id == wid and event.actor == "ann@example.com"
        assert event.detail["kind"] == ["logo", "artwork"] and event.detail["title"] == ["Old title", "New title"]
    # The index has the new kind too (registered again from the stored image).
    stored = world.engine.index.work(wid)
    assert stored is not None and stored.kind == "artwork"
    # A bad licensed site is refused with the reason, the form keeps what was typed.
    r = client.post(f"/works/{wid}/edit", data={"csrf_token": token, "title": "Typed", "kind": "artwork",
                                                "licensed_sites": "not a site!"})
    assert r.status_code == 422 and "not a host" in r.text and 'value="Typed"' in r.text
    with world.sessions() as s:
        work = s.get(Work, wid)
        assert work is not None and work.title == "New title"


def test_only_the_owner_and_staff_may_edit(world: World) -> None:
    ann = world.account("ann@example.com")
    world.account("bob@example.com")
    world.account("rita@example.com", role=Role.REVIEWER)
    wid = world.work(ann, logo_png(8), title="Ann's")
    bob = world.client("bob@example.com")
    assert bob.get(f"/works/{wid}/edit").status_code == 404
    token = csrf_from(bob.get("/profile").text)
    assert bob.post(f"/works/{wid}/edit", data={"csrf_token": token, "title": "Bob's", "kind": "logo"}
                    ).status_code == 404
    staff = world.client("rita@example.com")
    token = csrf_from(staff.get(f"/works/{wid}/edit").text)
    r = staff.post(f"/works/{wid}/edit", data={"csrf_token": token, "title": "Fixed by staff", "kind": "logo"})
    assert r.status_code == 303
    with world.sessions() as s:
        work = s.get(Work, wid)
        assert work is not None and work.title == "Fixed by staff"
