"""The on-disk and on-wire format (docs/FORMAT.md): typed objects and their ids, FastCDC
chunking, tree and manifest encodings, names, the store layout and the release index."""
