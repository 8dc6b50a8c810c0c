"""The API docs: `/docs` and `/redoc` work with no internet (fastapi-offline's own copies of
Swagger UI and ReDoc), their pages and assets are open, and every documented error status in the
OpenAPI spec carries one named example per code it can send."""

from __future__ import annotations

import ast
import re

import httpx

from api.tokens import mint_token
from conftest import ROOT, TEST_ENV, build_test_app, running_server
from chromium import ARTIFACTS

SECRET = "a-test-secret-that-is-long-enough-0123456789"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # hard-coded in redoc.standalone.js


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vg", timeout=30)


def raised_codes() -> set[str]:
    """Every code a route raises: the literal `code` of each `ApiError(...)` in the app's modules."""
    codes = set()
    for path in [ROOT / "main.py", ROOT / "signaling.py", *(ROOT / "api").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ApiError":
                args = node.args[2:3] + [k.value for k in node.keywords if k.arg == "code"]
                codes |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return codes


async def test_each_documented_error_code_has_its_own_example():
    from api.errors import DEFAULT_CODES

    async with client(build_test_app()) as http:
        spec = (await http.get("/openapi.json")).json()
    known = raised_codes() | set(DEFAULT_CODES.values())
    documented = set()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if not status.startswith(("3", "4", "5")):  # (a 307 to another node carries a body too)
                    continue
                examples = response["content"]["application/json"].get("examples")
                assert examples, (method, path, status)
                for name, example in examples.items():
                    value = example["value"]
                    assert name == value["code"] and value["code"] in known, (method, path, status, name)
                    assert value["detail"], (method, path, status, name)
                    documented.add(name)
    offer_503 = spec["paths"]["/api/offer"]["post"]["responses"]["503"]["content"]["application/json"]["examples"]
    assert set(offer_503) == {"server_full", "subject_limit", "cluster_unavailable", "saturated"}
    offer_422 = spec["paths"]["/api/offer"]["post"]["responses"]["422"]["content"]["application/json"]["examples"]
    assert set(offer_422) == {"undecodable_media", "invalid_request"}
    # and no code a route sends goes undocumented (a 405 or 500 can come from any route)
    assert raised_codes() - documented == set(), raised_codes() - documented


def test_every_code_in_the_api_documentation_has_an_example():
    from api.errors import EXAMPLE_DETAILS

    table = (ROOT / "doc" / "API_DOCUMENTATION.md").read_text(encoding="utf-8")
    codes = set(re.findall(r"^\| `([a-z_]+)` \| [0-9]{3} \|", table, re.MULTILINE))
    assert codes - set(EXAMPLE_DETAILS) == {"invalid_request", "internal_error"}  # those two: built in


async def test_docs_pages_and_assets_are_served_here_and_open():
    import main

    async with client(main.create_app(main.load_settings(**{**TEST_ENV, "AUTH_MODE": "jwt",
                                                             "JWT_SECRET": SECRET}))) as http:
        for page in ("/docs", "/redoc"):
            r = await http.get(page)
            assert r.status_code == 200 and "VisionGuard" in r.text
            urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", r.text)
            assert urls and all(u.startswith("/") for u in urls), urls  # nothing from a CDN
            for url in urls:
                asset = await http.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url  # open, no token
        assert (await http.get("/openapi.json")).json()["info"]["title"] == "VisionGuard"


async def offline_page(browser, base: str):
    """A page whose every request off this server is aborted (and noted in the list returned)."""
    page, blocked = await browser.new_page(), []
    await page.set_viewport_size({"width": 1280, "height": 1000})

    async def route(r):
        url = r.request.url
        if url.startswith(base + "/") or url.startswith(("data:", "blob:")):
            await r.continue_()
        else:
            blocked.append(url)
            await r.abort()

    await page.route("**/*", route)
    return page, blocked


async def test_docs_work_offline_and_try_it_out_sends_the_bearer_token(browser):
    async with running_server(AUTH_MODE="jwt", JWT_SECRET=SECRET) as (url, services):
        page, blocked = await offline_page(browser, url)
        await page.goto(url + "/docs")
        await page.wait_for_selector(".opblock", timeout=30000)
        assert await page.title() == "VisionGuard - Swagger UI"
        assert "VisionGuard" in await page.locator(".info .title").inner_text()

        # Authorize with a bearer token (HTTPBearer), then GET /api/sources: Try it out → Execute
        await page.click("button.authorize")
        await page.fill(".auth-container input", mint_token(SECRET, "alice", "view", 600))
        await page.click(".auth-btn-wrapper button.authorize")
        await page.click(".auth-btn-wrapper button.btn-done")
        operation = page.locator(".opblock-get", has=page.locator(".opblock-summary-path[data-path='/api/sources']"))
        await operation.locator(".opblock-summary").click()
        await operation.locator("button.try-out__btn").click()
        await operation.locator("button.execute").click()
        status = operation.locator(".live-responses-table .response .response-col_status")
        await status.first.wait_for(timeout=30000)
        assert (await status.first.inner_text()).strip() == "200"
        assert '"default"' in await operation.locator(".live-responses-table").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "docs-offline.png"), full_page=False)
        assert blocked == [], blocked

        redoc, redoc_blocked = await offline_page(browser, url)
        await redoc.goto(url + "/redoc")
        await redoc.locator("h2", has_text="The sources and their state").first.wait_for(timeout=30000)
        assert "VisionGuard" in await redoc.locator("h1").first.inner_text()
        await redoc.screenshot(path=str(ARTIFACTS / "redoc-offline.png"))
        # ReDoc 2 always asks for its "API docs by Redocly" logo; offline the image hides itself
        assert [u for u in redoc_blocked if u != REDOC_LOGO] == [], redoc_blocked
