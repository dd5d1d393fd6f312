#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: takes a while to start (argument, ms, default
4000), as a worker loading a model does, then answers each job with its inputs."""
import json
import sys
import time

time.sleep((int(sys.argv[1]) if len(sys.argv) > 1 else 4000) / 1000.0)
for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    reply = {"job": job.get("job"), "result": {"echo": job.get("inputs")}}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
