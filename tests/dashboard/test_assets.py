"""The dashboard's files load nothing from elsewhere (offline clusters; no CDN, no third-party JS)."""

from __future__ import annotations

import re
from importlib import resources

from broker.http import dashboard

FILES = ("index.html", "app.js", "style.css")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def _text(name: str) -> str:
    return resources.files("broker.http").joinpath("static", name).read_text()


def test_assets_reference_no_other_origin() -> None:
    for name in FILES:
        text = _text(name).replace(SVG_NAMESPACE, "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "@import" not in text and "import(" not in text, name


def test_page_uses_only_its_own_assets() -> None:
    html = _text("index.html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert set(sources) == {"data:,", "/static/style.css", "/static/app.js", "#"}
    assert "<script>" not in html and "style=" not in html  # nothing inline: the CSP forbids it
    assert set(dashboard.ASSETS) == {"app.js", "style.css"}
    assert "default-src 'none'" in dashboard.CSP and "connect-src 'self'" in dashboard.CSP
