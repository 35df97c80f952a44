"""``python -m torchdevice``: see :mod:`torchdevice.cli`."""

from torchdevice.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
