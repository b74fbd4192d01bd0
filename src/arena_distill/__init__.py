"""arena-distill shared library: one concern per module (see docs/architecture.md)."""
