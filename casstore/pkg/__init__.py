"""Julia packages and registries from the store: git tree hashes, registries, tarballs."""
