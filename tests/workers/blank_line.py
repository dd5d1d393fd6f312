#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: follows each reply with a blank line, as
`print(json.dumps(reply) + "\\n")` does."""
import json
import sys

for line in sys.stdin:
    job = json.loads(line)
    print(json.dumps({"job": job["job"], "result": job.get("inputs")}) + "\n", flush=True)
