"""The one base class of every error that is the user's to fix.

Imports nothing: data_shards/ imports it too, the one thing it takes from comgan/ (docs/DESIGN.md,
section 2)."""


class UserError(Exception):
    """A mistake the user can fix: bad input, config, data, artifact, a refusal of the storage, a
    run that is busy. The command line prints its message as one `error: ...` line and exits 2,
    never a traceback (cluster/cli.py)."""
