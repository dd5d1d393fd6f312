#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: answers each job with the tag it was started with
(its first argument) and the job's inputs, after sleeping "sleep_ms" (default 0), so a test can
tell which configuration of a pool computed a result."""
import json
import sys
import time

TAG = sys.argv[1] if len(sys.argv) > 1 else ""

for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    inputs = job.get("inputs") or {}
    time.sleep(int(inputs.get("sleep_ms", 0)) / 1000.0)
    result = {"tag": TAG, "echo": inputs}
    sys.stdout.write(json.dumps({"job": job.get("job"), "result": result}) + "\n")
    sys.stdout.flush()
