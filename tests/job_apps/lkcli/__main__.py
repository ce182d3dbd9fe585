"""Imitates `python -m livekit.agents start agent.py`: imports the user module by name,
so a user's `if __name__ == "__main__":` block never runs, in any process."""

import importlib
import sys

import driver

module = importlib.import_module(sys.argv[1])
driver.run_app(module.server)
