#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: exits with status 1 before reading any job,
so the daemon has to notice a pool command that cannot start."""
import sys

sys.stderr.write("crash_at_start: failing on purpose\n")
sys.exit(1)
