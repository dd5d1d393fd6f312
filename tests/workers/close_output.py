#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: closes its stdout at start, then lives on reading
jobs without answering (for 60 s at most after its input ends)."""
import os
import sys
import time

os.close(1)
for line in sys.stdin:
    pass
time.sleep(60)
