"""``python -m gossip_fast bench``: see :mod:`gossip_fast.cli`."""
import sys

from .cli import main

sys.exit(main())
