"""Integrations with torch subsystems that sit above the ``torch.cuda`` runtime (``torch.compile``)."""
