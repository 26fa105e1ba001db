"""The HTML pages: the demo at / (static HTML, CSS and JS from the package) and ReDoc at
/redoc. Nothing is fetched from a CDN; /docs (Swagger UI) comes from fastapi-offline.

The demo page talks to the server only through the public API (/v1/models,
/v1/classify), so it is also a worked example of a client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = "/static-offline-docs"  # where fastapi-offline mounts its Swagger UI and ReDoc

router = APIRouter(tags=["pages"])

# Mounted by create_app at /static.
assets = StaticFiles(directory=STATIC)


@router.get("/", include_in_schema=False)
async def demo_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        with_google_fonts=False,
    )
    # ReDoc's bundle shows its maker's logo from cdn.redoc.ly (and hides it when that
    # fails): images from this server only, so the page asks nothing of the internet.
    page.headers["Content-Security-Policy"] = "img-src 'self' data:"
    return page
