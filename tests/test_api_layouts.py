"""Dashboard layouts through the running API (real PostgreSQL, Redis, NATS; auth on):
templates per role, saving per key, sharing within the tenant only, read-only for
others, validation naming the field, and no scope carried by a layout."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fix_access import Keys

pytestmark = pytest.mark.integration


def layout(name: str = "Mine", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "widgets": [
            {"id": "kpis", "kind": "kpis", "x": 0, "y": 0, "w": 12, "h": 4},
            {
                "id": "chart-gmv",
                "kind": "chart",
                "x": 6,
                "y": 4,
                "w": 6,
                "h": 9,
                "options": {"metric": "gmv"},
            },
        ],
        **extra,
    }


async def test_a_key_with_no_layout_gets_its_roles_template(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    want = {"operator": "operations", "admin": "operations", "seller": "seller"}
    for name in ["operator", "admin", "seller", "viewer", "analyst"]:
        resp = await http.get("/v1/layouts", headers=keys.headers(name))
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert doc["current"] == f"template-{want.get(name, 'executive')}", (name, doc["current"])
        templates = [i for i in doc["items"] if i["template"]]
        assert sorted(i["id"] for i in templates) == [
            "template-executive",
            "template-operations",
            "template-seller",
        ]
        assert not any(i["mine"] for i in doc["items"])
    one = await http.get("/v1/layouts/template-operations", headers=keys.headers("viewer"))
    assert one.status_code == 200
    kinds = {w["kind"] for w in one.json()["widgets"]}
    assert kinds == {"kpis", "chart", "alerts", "top_sellers", "heatmap"}


async def test_a_saved_layout_is_the_keys_own_and_opens_next_time(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    h = keys.headers("viewer")
    created = await http.post("/v1/layouts", json=layout(), headers=h)
    assert created.status_code == 201, created.text
    lay = created.json()
    assert lay["id"].startswith("lay_") and lay["mine"] and not lay["shared"]
    assert lay["owner"] == keys.ids["viewer"]
    assert lay["widgets"][1]["options"] == {"metric": "gmv"}
    assert lay["widgets"][0]["options"] == {"period": "1h"}  # defaults filled in
    listed = (await http.get("/v1/layouts", headers=h)).json()
    assert listed["current"] == lay["id"]
    # moved and resized: saved, and read back as saved
    moved = layout("Mine, moved")
    moved["widgets"][1].update(x=0, y=13, w=12, h=10)
    put = await http.put(f"/v1/layouts/{lay['id']}", json=moved, headers=h)
    assert put.status_code == 200, put.text
    got = (await http.get(f"/v1/layouts/{lay['id']}", headers=h)).json()
    assert got["name"] == "Mine, moved"
    assert {k: got["widgets"][1][k] for k in "xywh"} == {"x": 0, "y": 13, "w": 12, "h": 10}
    assert got["updated_at"] >= got["created_at"]
    # another key of the same tenant does not see an unshared layout
    other = await http.get(f"/v1/layouts/{lay['id']}", headers=keys.headers("analyst"))
    assert other.status_code == 404
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["field"] == "layout_id"
    listed_other = (await http.get("/v1/layouts", headers=keys.headers("analyst"))).json()
    assert lay["id"] not in {i["id"] for i in listed_other["items"]}
    # deleted: gone, and the key is back on its template
    assert (await http.delete(f"/v1/layouts/{lay['id']}", headers=h)).status_code == 204
    assert (await http.get(f"/v1/layouts/{lay['id']}", headers=h)).status_code == 404
    assert (await http.get("/v1/layouts", headers=h)).json()["current"] == "template-executive"


async def test_a_shared_layout_is_read_only_for_the_tenant_and_invisible_elsewhere(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    created = await http.post(
        "/v1/layouts", json=layout("Team view", shared=True), headers=keys.headers("operator")
    )
    assert created.status_code == 201, created.text
    lid = created.json()["id"]
    for name in ["viewer", "seller", "analyst"]:  # same tenant: listed, opened, not owned
        listed = (await http.get("/v1/layouts", headers=keys.headers(name))).json()
        item = next(i for i in listed["items"] if i["id"] == lid)
        assert item["shared"] and not item["mine"] and item["owner"] == keys.ids["operator"]
        assert listed["current"] != lid  # a shared layout is offered, never imposed
        put = await http.put(
            f"/v1/layouts/{lid}", json=layout("hijack"), headers=keys.headers(name)
        )
        assert put.status_code == 403 and put.json()["field"] == "layout_id", put.text
        assert (
            await http.delete(f"/v1/layouts/{lid}", headers=keys.headers(name))
        ).status_code == 403
    for name in ["beta_viewer"]:  # another tenant: not even its existence
        assert (await http.get(f"/v1/layouts/{lid}", headers=keys.headers(name))).status_code == 404
        listed = (await http.get("/v1/layouts", headers=keys.headers(name))).json()
        assert lid not in {i["id"] for i in listed["items"]}
    # unshared again: gone from the others' lists
    again = await http.put(
        f"/v1/layouts/{lid}",
        json=layout("Team view", shared=False),
        headers=keys.headers("operator"),
    )
    assert again.status_code == 200 and not again.json()["shared"]
    assert (await http.get(f"/v1/layouts/{lid}", headers=keys.headers("viewer"))).status_code == 404
    owner = (await http.get(f"/v1/layouts/{lid}", headers=keys.headers("operator"))).json()
    assert owner["name"] == "Team view"  # the refused writes changed nothing


# (change to a valid document, the field named, words of the problem)
BAD: list[tuple[Any, str, str]] = [
    (lambda d: d["widgets"][1].update(w=13), "widgets[1].w", "expected 3 to 12"),
    (lambda d: d["widgets"][1].update(x=7), "widgets[1].x", "expected 0 to 6"),
    (lambda d: d["widgets"][0].update(kind="pie"), "widgets[0].kind", "unknown widget kind"),
    (lambda d: d["widgets"][1].update(id="kpis"), "widgets[1].id", "duplicate"),
    (lambda d: d["widgets"][1]["options"].update(metric="x"), "widgets[1].options.metric", ""),
    # a layout carries no scope: a tenant or seller in a widget is refused
    (lambda d: d["widgets"][1]["options"].update(tenant="beta"), "widgets[1].options.tenant", ""),
    (lambda d: d.update(seller="s2"), "seller", "unknown field"),
    (lambda d: d.update(name=""), "name", "characters"),
    (lambda d: d["widgets"][0].pop("h"), "widgets[0].h", "required"),
    (lambda d: d["widgets"][0].update(y=True), "widgets[0].y", "integer"),
]


async def test_a_bad_layout_is_a_422_naming_the_field(http: httpx.AsyncClient, keys: Keys) -> None:
    for i, (mutate, field, problem) in enumerate(BAD):
        doc = layout()
        mutate(doc)
        resp = await http.post("/v1/layouts", json=doc, headers=keys.headers("viewer"))
        assert resp.status_code == 422, (i, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        body = resp.json()
        assert body["field"] == field and problem in body["detail"], (i, body)
    listed = (await http.get("/v1/layouts", headers=keys.headers("viewer"))).json()
    assert not any(item["mine"] for item in listed["items"])  # nothing bad was stored


async def test_templates_and_bodies_that_are_not_objects_are_refused(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    h = keys.headers("operator")
    put = await http.put("/v1/layouts/template-operations", json=layout(), headers=h)
    assert put.status_code == 403 and "POST /v1/layouts" in put.json()["detail"]
    assert (await http.delete("/v1/layouts/template-seller", headers=h)).status_code == 403
    bad = await http.post("/v1/layouts", json=[1, 2], headers=h)
    assert bad.status_code == 422 and bad.json()["field"] == "$", bad.text
    missing = await http.put("/v1/layouts/lay_nope", json=layout(), headers=h)
    assert missing.status_code == 404
    assert (await http.get("/v1/layouts", headers=keys.headers("ingest"))).status_code == 403
    assert (await http.get("/v1/layouts")).status_code == 401
