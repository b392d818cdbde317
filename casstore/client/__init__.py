"""The node side: client config, release selection, following, metrics, doctor, and the
FUSE adapter in ``fuse/``."""
