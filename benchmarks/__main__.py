"""``python -m benchmarks``: the benchmarks of livekit-segments, run from a clone."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
