"""The FUSE adapter: a thin mfusepy layer over :mod:`casstore.view.vfs` (mount, ops, wiring)."""
