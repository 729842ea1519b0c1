"""The scripts and stylesheets a page loads: pages must load them from this site only (no CDN)."""

import re

_ASSET = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_OFFSITE = re.compile(r"(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def page_assets(html: str) -> list[str]:
    """The addresses of the scripts and stylesheets (any <link>) a page loads."""
    return _ASSET.findall(html)


def offsite_assets(html: str) -> list[str]:
    """Those of them on another host (an absolute or scheme-relative address)."""
    return [url for url in page_assets(html) if _OFFSITE.match(url)]
