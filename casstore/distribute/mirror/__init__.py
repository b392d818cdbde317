"""``cas mirror``: an incremental, verified export of a store into a plain folder.

One thing per module: :mod:`.folder` (what a mirror folder is), :mod:`.writer` (the
destination: atomic writes that never follow planted links), :mod:`.copy` (one run
of ``cas mirror``) and :mod:`.check` (``cas mirror --check``).
"""

from casstore.distribute.mirror.check import CheckReport, check_mirror
from casstore.distribute.mirror.copy import DEFAULT_JOBS, Mirror, MirrorReport, mirror
from casstore.distribute.mirror.folder import (
    CATALOG_MARKER,
    TMP_DIR,
    check_document,
    is_mirror_folder,
    is_writable_store,
    refuse_mirror,
)
from casstore.distribute.mirror.writer import DELAY_ENV, MirrorWriter

__all__ = ["CATALOG_MARKER", "DEFAULT_JOBS", "DELAY_ENV", "TMP_DIR", "CheckReport", "Mirror",
           "MirrorReport", "MirrorWriter", "check_document", "check_mirror", "is_mirror_folder",
           "is_writable_store", "mirror", "refuse_mirror"]
