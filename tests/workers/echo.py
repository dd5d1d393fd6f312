#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: answers each job with its own inputs.

Inputs that make it do real work before answering (all optional):
  sleep_ms          sleep this long (wall time)
  cpu_ms            burn this much CPU time in a busy loop
  alloc_mb          allocate this much memory and touch every page
  stderr_kb         write this many KiB to stderr first
  fork_bomb         fork children until fork fails (true: at most 512; a number: at most that)
  spawn_grandchild  start a detached child (own session) that sleeps 300 s and outlives us
  report_policy     after the rest, report whether the worker runs at background CPU priority,
                    by its own policy and nice value or by its cgroup's CPU weight
                    ("background": true/false)
The result is {"echo": <inputs>, "pid": <worker pid>, ...measurements}.
"""
import json
import os
import sys
import time

PAGE = 4096


def burn_cpu(ms):
    end = time.process_time() + ms / 1000.0
    spins = 0
    while time.process_time() < end:
        spins += 1
    return spins


def allocate(mb):
    block = bytearray(mb * 1024 * 1024)
    # bytearray may get zero pages from the kernel lazily; writing each page makes it resident.
    for offset in range(0, len(block), PAGE):
        block[offset] = 1
    return block


def fork_bomb(limit):
    children, error = [], None
    while len(children) < limit:
        try:
            pid = os.fork()
        except OSError as exc:
            error = str(exc)
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    return {"forked": len(children), "fork_error": error, "children": children}


def spawn_grandchild():
    pid = os.fork()
    if pid == 0:
        os.setsid()
        time.sleep(300)
        os._exit(0)
    return pid


def cgroup_background():
    """Whether this process's cgroup (v1 cpu or v2) has the lowest CPU weight."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _, controllers, path in lines:
        if "cpu" in controllers.split(","):
            roots = ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"]
            name, lowest = "cpu.shares", "2"
        elif controllers == "":
            roots = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            name, lowest = "cpu.weight", "1"
        else:
            continue
        for root in roots:
            try:
                with open(root + path + "/" + name) as f:
                    if f.read().strip() == lowest:
                        return True
            except OSError:
                pass
    return False


def thread_background():
    """Whether this thread runs in the batch class at nice 19."""
    policy = os.sched_getscheduler(0)
    return policy == os.SCHED_BATCH and os.getpriority(os.PRIO_PROCESS, 0) == 19


def handle(job):
    inputs = job.get("inputs") or {}
    result = {"echo": inputs, "pid": os.getpid()}
    if inputs.get("stderr_kb"):
        chunk = ("x" * 1023 + "\n") * int(inputs["stderr_kb"])
        sys.stderr.write(chunk)
        sys.stderr.flush()
    if inputs.get("sleep_ms"):
        time.sleep(int(inputs["sleep_ms"]) / 1000.0)
    if inputs.get("cpu_ms"):
        result["spins"] = burn_cpu(int(inputs["cpu_ms"]))
    if inputs.get("alloc_mb"):
        block = allocate(int(inputs["alloc_mb"]))
        result["allocated_mb"] = len(block) // (1024 * 1024)
    if inputs.get("fork_bomb"):
        bomb = inputs["fork_bomb"]
        limit = 512 if bomb is True else int(bomb)
        result.update(fork_bomb(limit))
    if inputs.get("spawn_grandchild"):
        result["grandchild_pid"] = spawn_grandchild()
    if inputs.get("report_policy"):
        result["background"] = thread_background() or cgroup_background()
    return result


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        job = None
        try:
            job = json.loads(line)
            reply = {"job": job.get("job"), "result": handle(job)}
        except Exception as exc:  # a test worker reports, it does not die
            job_id = job.get("job") if isinstance(job, dict) else None
            reply = {"job": job_id, "error": "echo worker: %s" % exc}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
