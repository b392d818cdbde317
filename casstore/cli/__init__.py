"""The ``cas`` command: one module per subcommand (borg's archiver/<name>_cmd.py)."""
