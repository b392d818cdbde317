"""File I/O every layer shares: durable writes (temp, fsync, rename), bounded fstat-first
reads of files that may be hostile, and the private-folder rule."""
