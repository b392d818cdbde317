"""``cas serve``: the aiohttp application (Julia's Pkg protocol; the store layout later)."""

from server.app import make_app

__all__ = ["make_app"]
