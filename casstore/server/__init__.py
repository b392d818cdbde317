"""``cas serve``: the aiohttp application (store layout, push, Julia's Pkg protocol).

Import :func:`casstore.server.app.make_app` from its module: importing this package must stay
free of side effects, because ``cas serve --workers N`` configures prometheus-client
(multiprocess mode) before it is first imported.
"""
