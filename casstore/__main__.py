"""``python -m casstore`` is ``cas``."""

from casstore.cli.main import main

main()
