"""The JSON API: works, matches, notices, the on-demand check, problem details, OpenAPI."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from webapp_testkit import World, logo_png, make_settings, product_shot

from storage.models import Match, Role, Work
from webapp import create_app


def _problem(r: object, status: int) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text)  # type: ignore[attr-defined]
    assert r.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body: dict[str, object] = r.json()  # type: ignore[attr-defined]
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def test_register_list_get_and_remove_works(world: World) -> None:
    world.account("ann@example.com")
    api = world.api("ann@example.com")
    r = api.post(
        "/api/v1/works",
        data={
            "title": "Acme",
            "kind": "logo",
            "registration_number": "TM-9",
            "licensed_sites": ["shop.example", "https://masto.example/@acme"],
        },
        files={"file": ("acme.png", logo_png(1), "image/png")},
    )
    assert r.status_code == 201, r.text
    work = r.json()
    assert (
        work["title"] == "Acme" and work["kind"] == "logo" and work["registration_number"] == "TM-9"
    )
    assert work["licensed_sites"] == ["shop.example", "https://masto.example/@acme"]
    listed = api.get("/api/v1/works").json()
    assert [w["id"] for w in listed] == [work["id"]] and listed[0]["match_count"] == 0
    assert api.get(f"/api/v1/works/{work['id']}").json()["filename"] == "acme.png"
    # The engine now finds it; removing drops it from the index too.
    assert api.post("/api/v1/check", files={"file": ("x.png", logo_png(1), "image/png")}).json()[
        "copies"
    ]
    assert api.delete(f"/api/v1/works/{work['id']}").status_code == 204
    assert api.get("/api/v1/works").json() == []
    _problem(api.get(f"/api/v1/works/{work['id']}"), 404)
    assert not api.post(
        "/api/v1/check", files={"file": ("x.png", logo_png(1), "image/png")}
    ).json()["copies"]


def test_check_reports_scores_and_region_for_a_partial_copy(world: World) -> None:
    owner = world.account("ann@example.com")
    wid = world.work(owner, logo_png(1), "Acme", indexed=True)
    world.work(owner, logo_png(2, "OTHER"), "Other", indexed=True)
    shot, (tl, _, br, _) = product_shot(logo_png(1))
    api = world.api("ann@example.com")
    result = api.post("/api/v1/check", files={"file": ("shot.jpg", shot, "image/jpeg")}).json()
    assert result["copies"] is True
    best = result["candidates"][0]
    assert best["work_id"] == wid and best["match"] is True and best["title"] == "Acme"
    assert best["score"] >= result["threshold"] and best["signals"]
    xs = [p[0] for p in best["region"]]
    ys = [p[1] for p in best["region"]]
    # The region lies around the pasted logo (320..576 x 160..416), within a generous margin.
    assert tl[0] - 40 <= min(xs) and max(xs) <= br[0] + 40
    assert tl[1] - 40 <= min(ys) and max(ys) <= br[1] + 40
    from webapp_testkit import jpeg

    from workers.demo import photo

    clean = api.post(
        "/api/v1/check", files={"file": ("clean.jpg", jpeg(photo(9)), "image/jpeg")}
    ).json()
    assert clean["copies"] is False


def test_staff_tokens_check_against_every_owner(world: World) -> None:
    owner = world.account("ann@example.com")
    world.account("platform@example.com", Role.REVIEWER)
    wid = world.work(owner, logo_png(1), "Acme", indexed=True)
    result = (
        world.api("platform@example.com")
        .post("/api/v1/check", files={"file": ("x.png", logo_png(1), "image/png")})
        .json()
    )
    assert result["copies"] and result["candidates"][0]["work_id"] == wid


def test_matches_and_notices_are_listed_best_first(world: World) -> None:
    owner = world.account("ann@example.com")
    wid = world.work(owner, logo_png(1), "Acme")
    shot, region = product_shot(logo_png(1))
    low = world.match(wid, shot, url="https://a.example/1", score=0.6)
    high = world.match(wid, shot, url="https://b.example/1", score=0.97, region=region)
    nid = world.notice(owner, [high], host="b.example")
    api = world.api("ann@example.com")
    matches = api.get("/api/v1/matches").json()
    assert [m["id"] for m in matches] == [high, low]
    assert matches[0]["region"] == region and matches[0]["page_url"] == "https://b.example/1"
    assert matches[0]["captured_at"] and matches[0]["signals"]["local"] == 0.95
    assert [
        m["id"] for m in api.get("/api/v1/matches", params={"limit": 1, "offset": 1}).json()
    ] == [low]
    notices = api.get("/api/v1/notices").json()
    assert notices[0]["id"] == nid and notices[0]["urls"] == ["https://b.example/1"]
    assert notices[0]["match_ids"] == [high] and notices[0]["state"] == "draft"
    # The work is a logo: the notice's one part is a trademark complaint.
    assert notices[0]["law"] == "dmca" and notices[0]["laws"] == ["trademark"]
    one = api.get(f"/api/v1/notices/{nid}").json()
    assert one["host"] == "b.example" and one["laws"] == ["trademark"]
    assert api.get(f"/api/v1/works/{wid}").json()["match_count"] is None
    assert api.get("/api/v1/works").json()[0]["match_count"] == 2


def test_errors_are_problem_details_with_clear_messages(world: World) -> None:
    world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    anon = TestClient(world.app)
    body = _problem(anon.get("/api/v1/works"), 401)
    assert "Bearer" in str(body["detail"])
    assert anon.get("/api/v1/works").headers["www-authenticate"].startswith("Bearer")
    _problem(
        TestClient(world.app, headers={"Authorization": "Bearer aw_nope"}).get("/api/v1/works"), 401
    )
    api = world.api("ann@example.com")
    body = _problem(api.get("/api/v1/works/12345"), 404)
    assert body["detail"] == "no work with id 12345"
    body = _problem(api.get("/api/v1/works/abc"), 422)
    assert "work_id" in str(body["detail"]) and body["errors"]
    body = _problem(
        api.post(
            "/api/v1/works",
            data={"kind": "poster"},
            files={"file": ("a.png", logo_png(1), "image/png")},
        ),
        422,
    )
    assert "kind" in str(body["detail"])
    body = _problem(api.post("/api/v1/works", data={"kind": "logo"}), 422)
    assert "file" in str(body["detail"])
    body = _problem(
        api.post("/api/v1/check", files={"file": ("a.txt", b"just text", "text/plain")}), 415
    )
    assert "upload a PNG, JPEG, WebP or SVG" in str(body["detail"])
    body = _problem(
        api.post("/api/v1/check", files={"file": ("cut.png", logo_png(1)[:300], "image/png")}), 415
    )
    assert "cut.png" in str(body["detail"])
    body = _problem(
        world.api("rita@example.com").post(
            "/api/v1/works",
            data={"kind": "logo"},
            files={"file": ("a.png", logo_png(1), "image/png")},
        ),
        403,
    )
    assert "owner role" in str(body["detail"])
    _problem(api.get("/api/v1/nothing-here"), 404)
    _problem(api.put("/api/v1/works"), 405)
    with world.sessions() as s:
        assert s.scalars(select(Work)).all() == []


def test_uploads_over_the_limit_get_413(world: World, tmp_path: object) -> None:
    settings = make_settings(world.settings.data_dir, crawler={"max_image_bytes": 5000})
    app = create_app(settings, sessions=world.sessions, blobs=world.blobs, engine=world.engine)
    world.account("ann@example.com")
    api = TestClient(app, headers={"Authorization": f"Bearer {world.tokens['ann@example.com']}"})
    big = logo_png(1)
    assert len(big) > 5000
    body = _problem(api.post("/api/v1/check", files={"file": ("big.png", big, "image/png")}), 413)
    assert "limit" in str(body["detail"])
    _problem(
        api.post(
            "/api/v1/works", data={"kind": "logo"}, files={"file": ("big.png", big, "image/png")}
        ),
        413,
    )


def test_openapi_document_describes_the_api(world: World) -> None:
    spec = TestClient(world.app).get("/api/v1/openapi.json").json()
    paths = spec["paths"]
    assert {
        "/api/v1/works",
        "/api/v1/works/{work_id}",
        "/api/v1/matches",
        "/api/v1/notices",
        "/api/v1/check",
    } <= set(paths)
    assert not any(not p.startswith("/api/") for p in paths), (
        "pages must stay out of the API document"
    )
    assert "Problem" in spec["components"]["schemas"]
    check = paths["/api/v1/check"]["post"]
    assert {"413", "415", "401"} <= set(check["responses"])
    assert "application/problem+json" in check["responses"]["415"]["content"]
    assert spec["paths"]["/api/v1/works"]["post"]["responses"]["201"]


def test_suppressed_matches_are_hidden_unless_asked(world: World) -> None:
    owner = world.account("ann@example.com")
    wid = world.work(owner, logo_png(1), "Acme")
    shot, _ = product_shot(logo_png(1))
    mid = world.match(wid, shot, url="https://shop.example/1")
    with world.sessions() as s:
        from storage.models import MatchStatus

        m = s.get(Match, mid)
        assert m is not None
        m.status = MatchStatus.SUPPRESSED
        s.commit()
    api = world.api("ann@example.com")
    assert api.get("/api/v1/matches").json() == []
    assert [
        m["status"] for m in api.get("/api/v1/matches", params={"include_suppressed": True}).json()
    ] == ["suppressed"]
