#!/usr/bin/env python3
"""Random-corruption fuzz of `lora inspect` on a checkpoint: how often a damaged file crashes.

usage: fuzz_inspect.py LORA_BINARY CKPT.h5 [--cases N] [--seed S] [--max-bytes K] [--timeout SEC]
                       [--keep DIR]

Case i copies CKPT.h5 and overwrites 1..K (default 8) bytes at uniformly random positions with
random values that differ from the original bytes (so every case really changes the file), then
runs `LORA_BINARY inspect COPY` with a timeout. Cases are a pure function of (seed, i).

Outcomes: exit 2 with the file's path in the message (the contract for a bad file); exit 0
(accepted); any other exit code; a signal (crash); a timeout (hang). Crashing and hanging copies
are kept under --keep for replay. Exit status: 0 when no case crashed, hung, exited with another
code or gave exit 2 without naming the file; 1 otherwise.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def corrupt(data: bytes, rng: random.Random, max_bytes: int) -> tuple[bytes, list[int]]:
    out = bytearray(data)
    n = rng.randint(1, max_bytes)
    positions = sorted(rng.sample(range(len(out)), n))
    for p in positions:
        out[p] = (out[p] + rng.randint(1, 255)) % 256  # never the original value
    return bytes(out), positions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary")
    ap.add_argument("checkpoint")
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-bytes", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--keep", default=None, help="directory for crashing/hanging copies")
    args = ap.parse_args()

    with open(args.checkpoint, "rb") as f:
        original = f.read()
    counts = {"exit2_named": 0, "exit2_unnamed": 0, "exit0": 0, "other_exit": 0, "signal": 0,
              "timeout": 0}
    signals = {}
    examples = []
    work = tempfile.mkdtemp(prefix="lora_fuzz_inspect_")
    start = time.time()
    try:
        for i in range(args.cases):
            rng = random.Random(args.seed * 1_000_003 + i)
            data, positions = corrupt(original, rng, args.max_bytes)
            path = os.path.join(work, f"case-{i}.h5")
            with open(path, "wb") as f:
                f.write(data)
            keep = False
            try:
                r = subprocess.run([args.binary, "inspect", path], capture_output=True,
                                   timeout=args.timeout)
                code = r.returncode
                msg = r.stderr.decode("utf-8", "replace")
                if code == 2:
                    counts["exit2_named" if path in msg else "exit2_unnamed"] += 1
                    if path not in msg:
                        keep = True
                elif code == 0:
                    counts["exit0"] += 1
                elif code < 0:
                    counts["signal"] += 1
                    name = signal.Signals(-code).name
                    signals[name] = signals.get(name, 0) + 1
                    keep = True
                else:
                    counts["other_exit"] += 1
                    keep = True
                if keep:
                    examples.append(f"case {i}: exit {code}, bytes {positions}: {msg.strip()[:200]}")
            except subprocess.TimeoutExpired:
                counts["timeout"] += 1
                keep = True
                examples.append(f"case {i}: timeout, bytes {positions}")
            if keep and args.keep:
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(path, os.path.join(args.keep, f"case-{i}.h5"))
            os.unlink(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - start
    print(f"{args.cases} cases ({os.path.basename(args.checkpoint)}, {len(original)} bytes, "
          f"1-{args.max_bytes} random bytes, seed {args.seed}) in {elapsed:.1f} s")
    for k, v in counts.items():
        print(f"  {k:14s} {v}")
    for name, v in sorted(signals.items()):
        print(f"  signal {name}: {v}")
    for e in examples[:20]:
        print("  " + e)
    bad = counts["exit2_unnamed"] + counts["other_exit"] + counts["signal"] + counts["timeout"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
