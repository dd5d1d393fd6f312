#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: at its first job it starts a child in a session of
its own that keeps the worker's pipes open (for 20 s at most), names it on stderr, then exits 7
without answering."""
import os
import sys
import time

for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        time.sleep(20)
        os._exit(0)
    sys.stderr.write("left child %d\n" % pid)
    sys.stderr.flush()
    os._exit(7)
