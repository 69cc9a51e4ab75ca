#!/usr/bin/env python3
"""progress: builds a few hundred MiB of Python objects in steps, logging progress.

Usage: progress.py OUTPUT [STEPS [SLEEP_SECONDS]]

Each step builds about 7.5 MiB of objects (strings, large ints, a dict of
tuples) from a random.Random seeded with the step number, folds them into a
running SHA-256, and appends a line "step <k> objects <n> sum <hex>" to
OUTPUT (flushed), then sleeps SLEEP_SECONDS (default 0.25) so a test can
checkpoint it between steps. The default of 40 steps reaches about 300 MiB.

At the end it walks everything it built, recomputes the checksum from scratch
(reading every object back, which faults in all of a lazily restored heap),
and writes "final steps <k> objects <n> sum <hex> verify ok" (or "verify
FAILED <hex>") to OUTPUT and "done <hex>" to stdout. It exits 0 only when the
recomputed checksum matches.

The output depends on nothing but the arguments: no times, pids, addresses,
or set/hash iteration order, so two runs give byte-identical files.
"""

import hashlib
import random
import sys
import time

STRINGS_PER_STEP = 25000
DICT_PER_STEP = 6000


def build(step):
    """Returns the objects of one step, built deterministically from step."""
    r = random.Random(step)
    blob = r.randbytes(STRINGS_PER_STEP * 40)
    strings = [
        "%d:%d:%s" % (step, i, blob[i * 40:(i + 1) * 40].hex())
        for i in range(STRINGS_PER_STEP)
    ]
    numbers = [r.getrandbits(96) for _ in range(STRINGS_PER_STEP)]
    table = {}
    for i in range(DICT_PER_STEP):
        table["k%d_%d" % (step, i)] = (numbers[i * 3], strings[i * 2][-24:] * 3)
    return strings, numbers, table


def fold(h, objs):
    """Folds one step's objects into the hash h, in a fixed order."""
    strings, numbers, table = objs
    for s in strings:
        h.update(s.encode())
    for n in numbers:
        h.update(n.to_bytes(12, "little"))
    for k, (n, s) in table.items():
        h.update(k.encode())
        h.update(n.to_bytes(12, "little"))
        h.update(s.encode())
    return h


def main():
    out = open(sys.argv[1], "w")
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.25

    kept = []
    running = hashlib.sha256()
    objects = 0
    for step in range(1, steps + 1):
        objs = build(step)
        kept.append(objs)
        fold(running, objs)
        objects += len(objs[0]) + len(objs[1]) + len(objs[2])
        out.write("step %d objects %d sum %s\n" % (step, objects, running.hexdigest()[:32]))
        out.flush()
        time.sleep(pause)

    again = hashlib.sha256()
    for objs in kept:
        fold(again, objs)
    ok = again.hexdigest() == running.hexdigest()
    verdict = "verify ok" if ok else "verify FAILED %s" % again.hexdigest()[:32]
    out.write("final steps %d objects %d sum %s %s\n"
              % (steps, objects, running.hexdigest()[:32], verdict))
    out.close()
    print("done %s" % running.hexdigest()[:32], flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
