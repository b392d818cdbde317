"""The writable store: objects and refs on disk, the LMDB index, put, get, fsck, gc,
publishing releases, and the one walk over reachable objects."""
