#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: dies at start as of an uncaught exception, writing
a traceback of 20 lines to stderr (more than the daemon logs a second), and exits 1. Its last
line, the one that names the error, is `KeyError: 'nope'`. The traceback is written out rather
than raised, so it has the same 20 lines on every Python version."""
import sys

lines = ["Traceback (most recent call last):"]
for depth in range(9):
    lines.append('  File "/srv/app/catalog.py", line %d, in look_up_%d' % (10 + depth, depth))
    lines.append('    return look_up_%d(key)' % (depth + 1))
lines.append("KeyError: 'nope'")
for line in lines:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
sys.exit(1)
