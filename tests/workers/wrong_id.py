#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: answers each job 20 times, never with its id:
with the id as a string (argument "string", the default) or the previous job's id
("previous")."""
import json
import sys

mode = sys.argv[1] if len(sys.argv) > 1 else "string"
for line in sys.stdin:
    job = json.loads(line)
    wrong = str(job["job"]) if mode == "string" else job["job"] - 1
    for _ in range(20):
        sys.stdout.write(json.dumps({"job": wrong, "result": {"ok": 1}}) + "\n")
    sys.stdout.flush()
