"""casstore FUSE client: mount a signed release read-only (see docs/CLIENT.md)."""
