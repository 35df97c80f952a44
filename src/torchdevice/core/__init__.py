"""Backend selection, the patch registry and logging."""
