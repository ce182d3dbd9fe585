"""The benchmarks of livekit-segments: the runtime patch against upstream livekit-agents.

Developer tooling, run from a clone (``python -m benchmarks``, or ``scripts/bench``); not part
of the package users install. `runner.run_bench` runs them from code. Modules:
`install_cost` (B1), `segment_cost` (B2), `signal_latency` (B3), `segment_gap` (B4), `leaks`
(B5), `concurrent_sessions` (B6), `instructions` (B7, under callgrind) and `cross_process`
(B1n, B2n, B7n: the native form in a worker process of its own); `fakes` holds the scripted
agent and sinks, `forms` switches between upstream and the patch, `report` renders the table
and the JSON, `record` writes BENCHMARKS.md, `process_setup` is what every bench process
shares.

Importing this package imports nothing else: the command line and the workers import the
modules they need.
"""
