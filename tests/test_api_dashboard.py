"""The dashboard's serving: the bundle at / and /assets with the right content types and
caching, the page explaining how to build it when it is missing, /v1/me (whose key the
page holds), and the bundle shipped in the Python package. Through the running API."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import httpx
import pytest

from linkpulse.api.routes.dashboard import BUNDLE
from tests.api_server import ApiServer
from tests.fix_access import Keys

ROOT = Path(__file__).resolve().parents[1]
INDEX = '<!doctype html><html><head><script type="module" src="/assets/index-abc123.js"></script>'


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A built bundle of our own (the real one is built by scripts/install.sh)."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(INDEX + "</head><body></body></html>")
    (tmp_path / "assets" / "index-abc123.js").write_text("console.log('lp')")
    (tmp_path / "assets" / "index-def456.css").write_text("body{margin:0}")
    (tmp_path / "secret.txt").write_text("outside assets")
    return tmp_path


@pytest.fixture
def dashboard_at(served: tuple[str, ApiServer]) -> Iterator[tuple[str, ApiServer]]:
    yield served
    served[1].server.config.app.state.dashboard_dir = None


def point(server: ApiServer, where: Path) -> None:
    server.server.config.app.state.dashboard_dir = where


@pytest.mark.integration
def test_the_bundle_is_served_with_its_content_types_and_caching(
    dashboard_at: tuple[str, ApiServer], bundle: Path
) -> None:
    url, server = dashboard_at
    point(server, bundle)
    with httpx.Client(base_url=url, timeout=10) as c:
        page = c.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"  # it names the current build's assets
        assert "/assets/index-abc123.js" in page.text
        js = c.get("/assets/index-abc123.js")
        assert js.status_code == 200 and js.text == "console.log('lp')"
        assert js.headers["content-type"].split(";")[0] in {
            "text/javascript",
            "application/javascript",
        }
        assert "immutable" in js.headers["cache-control"]
        css = c.get("/assets/index-def456.css")
        assert css.headers["content-type"].startswith("text/css")
        for bad in ["/assets/nope.js", "/assets/%2e%2e/secret.txt", "/assets/..%2fsecret.txt"]:
            resp = c.get(bad)
            assert resp.status_code == 404, (bad, resp.status_code)
            assert resp.headers["content-type"] == "application/problem+json"


@pytest.mark.integration
def test_a_missing_bundle_says_how_to_build_it(
    dashboard_at: tuple[str, ApiServer], tmp_path: Path
) -> None:
    url, server = dashboard_at
    point(server, tmp_path / "not-built")
    with httpx.Client(base_url=url, timeout=10) as c:
        page = c.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 503
        assert page.headers["content-type"].startswith("text/html")
        assert "npm ci && npm run build" in page.text and "scripts/install.sh" in page.text
        problem = c.get("/", headers={"Accept": "application/json"})
        assert problem.status_code == 503
        assert problem.headers["content-type"] == "application/problem+json"
        assert problem.json()["type"].endswith("/dashboard-not-built")
        assert "npm run build" in problem.json()["detail"]
        assert c.get("/healthz").status_code == 200  # the API works without it


@pytest.mark.integration
async def test_me_names_the_keys_scope(http: httpx.AsyncClient, keys: Keys) -> None:
    seller = (await http.get("/v1/me", headers=keys.headers("seller"))).json()
    assert seller == {
        "id": keys.ids["seller"],
        "role": "seller",
        "tenant": "acme",
        "seller": "s1",
        "kind": "key",
        "expires_at": None,
        "tenants": ["acme"],
    }
    viewer = (await http.get("/v1/me", headers=keys.headers("beta_viewer"))).json()
    assert viewer["tenants"] == ["beta"] and viewer["seller"] is None
    admin = (await http.get("/v1/me", headers=keys.headers("admin"))).json()
    assert admin["role"] == "admin" and admin["tenants"] == ["acme", "beta"]  # the picker
    assert (await http.get("/v1/me")).status_code == 401
    assert (await http.get("/v1/me", headers=keys.headers("ingest"))).status_code == 403


def test_the_bundle_is_shipped_in_the_python_package_and_not_committed() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = meta["tool"]["setuptools"]["package-data"]["linkpulse"]
    rel = BUNDLE.relative_to(ROOT / "linkpulse")
    for built in [rel / "index.html", rel / "assets" / "index-abc123.js"]:
        # setuptools' globs: '*' stays within one folder
        p = PurePosixPath(built.as_posix())
        assert any(len(p.parts) == len(PurePosixPath(g).parts) and p.match(g) for g in globs), (
            built,
            globs,
        )
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/linkpulse/api/static/dashboard/" in ignored
    web = ROOT / "web"
    assert (web / "package.json").is_file() and (web / "package-lock.json").is_file()
