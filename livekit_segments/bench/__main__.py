"""``python -m livekit_segments.bench``: the benchmarks without the package CLI."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
