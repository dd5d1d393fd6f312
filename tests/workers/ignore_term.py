#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: ignores SIGTERM and, once it has a job, never
answers, so only SIGKILL (or killing its cgroup) ends it."""
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stderr.write("ignore_term: SIGTERM ignored\n")
sys.stderr.flush()

for line in sys.stdin:
    if line.strip():
        while True:
            time.sleep(3600)
