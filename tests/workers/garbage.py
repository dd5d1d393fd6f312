#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: answers every job with lines that are not JSON
(text, then bytes that are not UTF-8), breaking the worker protocol."""
import sys

for line in sys.stdin:
    if not line.strip():
        continue
    sys.stdout.write("this is not json: %s\n" % line.strip()[:40])
    sys.stdout.flush()
    sys.stdout.buffer.write(b"\xff\xfe{\"job\":\n")
    sys.stdout.buffer.flush()
