"""Compares the LoRA adapters of two checkpoints: same modules, same shapes, and every element of
/adapters/<module>/A [d_in, r] and /adapters/<module>/B [r, d_out] within TOL (default 1e-6).
Also requires the same step. Prints the largest difference; exit 0 when they match, 1 otherwise.

usage: compare_adapters.py CKPT_A.h5 CKPT_B.h5 [TOL]
"""
import sys

import h5py
import numpy as np


def adapters(path):
    with h5py.File(path, "r") as f:
        step = int(f.attrs["step"])
        out = {}
        for module, group in f["adapters"].items():
            for name in ("A", "B"):
                out[f"{module}/{name}"] = np.asarray(group[name], dtype=np.float64)
        return step, out


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    tol = float(sys.argv[3]) if len(sys.argv) == 4 else 1e-6
    step_a, a = adapters(sys.argv[1])
    step_b, b = adapters(sys.argv[2])
    problems = []
    if step_a != step_b:
        problems.append(f"step {step_a} vs {step_b}")
    if sorted(a) != sorted(b):
        problems.append(f"tensors {sorted(a)} vs {sorted(b)}")
    if not a:
        problems.append("no adapters")
    max_diff = 0.0
    for name in sorted(set(a) & set(b)):
        if a[name].shape != b[name].shape:
            problems.append(f"{name}: shape {a[name].shape} vs {b[name].shape}")
            continue
        diff = float(np.max(np.abs(a[name] - b[name]))) if a[name].size else 0.0
        max_diff = max(max_diff, diff)
        if not diff <= tol:
            problems.append(f"{name}: max |diff| {diff:.3g} > {tol:g}")
    print(f"compare_adapters: {len(a)} tensors, step {step_a}, max |diff| {max_diff:.3g}")
    for p in problems:
        print(f"compare_adapters: {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
