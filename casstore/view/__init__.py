"""The filesystem view of a release: decoded trees and verified chunks (``reader``), THE
filesystem model (``vfs``) and the whole-file copies it serves reads from (``filecache``)."""
