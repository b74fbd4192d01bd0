"""arena-distill shared library: one concern per module (see docs/architecture.md)."""
from . import logs as _logs

# Quiet third-party chatter before any library loads (every entry point imports this package first);
# ARENA_VERBOSE=1 or -v on the command line shows everything. See arena_distill/logs.py.
_logs.install()
