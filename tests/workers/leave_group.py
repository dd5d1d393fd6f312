#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: at start it moves itself into the process group of
a child it starts (which sleeps 60 s), then answers its inputs; x = "hang" is never answered, and
it lives on for 60 s after its input ends."""
import json
import os
import sys
import time

ready_r, ready_w = os.pipe()
child = os.fork()
if child == 0:
    os.close(0)
    os.close(1)
    os.setpgid(0, 0)
    os.write(ready_w, b"x")
    time.sleep(60)
    os._exit(0)
os.read(ready_r, 1)
os.setpgid(0, child)
for line in sys.stdin:
    job = json.loads(line)
    if (job.get("inputs") or {}).get("x") == "hang":
        time.sleep(60)
    sys.stdout.write(json.dumps({"job": job["job"], "result": {"pid": os.getpid()}}) + "\n")
    sys.stdout.flush()
time.sleep(60)
