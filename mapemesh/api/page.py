"""The dashboard's page at `/ui/`: the static files shipped in `mapemesh/api/ui/` (no build step), served as they
are.

The page holds no data, so it loads without the token; it asks for the token (or takes it once from the URL's
fragment, `/ui/#token=...`, which browsers never send to a server), keeps it in the tab's sessionStorage, and sends
it as `Authorization: Bearer` on every data request, the event stream included (read with fetch, not EventSource,
which cannot send the header). A strict Content-Security-Policy allows only the page's own scripts, styles and
requests to this API.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _files() -> dict[str, tuple[bytes, str]]:
    """Every file of the page: name -> (content, media type); nothing else is ever served."""
    folder = resources.files("mapemesh.api").joinpath("ui")
    out = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in TYPES:
            out[entry.name] = (entry.read_bytes(), TYPES[suffix])
    return out


def router() -> APIRouter:
    """`/ui` (redirects to `/ui/`), `/ui/` (the page) and `/ui/NAME` (its scripts and styles); not in the OpenAPI
    document: they are a page, not the API."""
    files = _files()
    api = APIRouter(include_in_schema=False)

    @api.get("/ui")
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)

    @api.get("/ui/{name}")
    @api.get("/ui/", name="ui_index")
    async def ui_file(name: str = "index.html") -> Response:
        if name not in files:
            raise HTTPException(404, f"the dashboard has no file {name!r}")
        body, media_type = files[name]
        return Response(body, media_type=media_type, headers=HEADERS)

    return api
