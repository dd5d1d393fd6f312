#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: emits a checkpoint and then exits (status 3,
input "exit_code" to change) without answering, as a worker crashing mid-job does. Given a
"state" (the daemon's retry from the last checkpoint) it finishes instead, unless the input
"always" is true."""
import json
import os
import sys

for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    inputs = job.get("inputs") or {}
    state = job.get("state")
    if state is not None and not inputs.get("always"):
        reply = {"job": job.get("job"), "result": {"resumed": True, "state": state}}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        continue
    checkpoint = {"job": job.get("job"), "checkpoint": {"step": 1, "pid": os.getpid()}}
    sys.stdout.write(json.dumps(checkpoint) + "\n")
    sys.stdout.flush()
    os._exit(int(inputs.get("exit_code", 3)))
