"""Reads a checkpoint written by trainer/checkpoint.cpp with h5py and checks it against what the C++
side says it wrote.

usage: h5py_read.py CKPT.h5 MODULE EXPECTED_A.bin EXPECTED_CONFIG.txt STEP

EXPECTED_A.bin holds adapter A of MODULE as raw little-endian float32 values. The script checks that
/adapters/MODULE/A equals them bit for bit (shape [d_in, rank] from the /adapters 'rank' attribute),
that B has shape [rank, d_out], that string attributes read back as Python str (format, config_yaml)
and that the step attribute matches. Exit 0 when everything matches, 1 with a message otherwise,
77 when h5py is not installed.
"""
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"h5py unavailable: {e}")
    sys.exit(77)


def main():
    path, module, expected_a_path, expected_config_path, step = sys.argv[1:6]
    errors = []
    with h5py.File(path, "r") as f:
        fmt = f.attrs["format"]
        if not isinstance(fmt, str) or fmt != "lora-checkpoint":
            errors.append(f"format attribute {fmt!r} ({type(fmt).__name__})")
        config = f.attrs["config_yaml"]
        with open(expected_config_path, encoding="utf-8") as cf:
            expected_config = cf.read()
        if not isinstance(config, str) or config != expected_config:
            errors.append(f"config_yaml {config!r} != {expected_config!r}")
        if int(f.attrs["step"]) != int(step):
            errors.append(f"step {f.attrs['step']} != {step}")
        rank = int(f["adapters"].attrs["rank"])
        a = f[f"adapters/{module}/A"][()]
        b = f[f"adapters/{module}/B"][()]
        if a.dtype != np.float32 or b.dtype != np.float32:
            errors.append(f"dtypes {a.dtype} {b.dtype}")
        expected = np.fromfile(expected_a_path, dtype="<f4")
        if a.ndim != 2 or a.shape[1] != rank or a.size != expected.size:
            errors.append(f"A shape {a.shape}, rank {rank}, expected {expected.size} values")
        elif not np.array_equal(a.reshape(-1).view(np.uint32), expected.view(np.uint32)):
            errors.append("A values differ from the C++ buffer")
        if b.ndim != 2 or b.shape[0] != rank:
            errors.append(f"B shape {b.shape}, rank {rank}")
        scaling = float(f[f"adapters/{module}"].attrs["scaling"])
        print(f"{module}: A {a.shape} B {b.shape} scaling {scaling} sum|A| {np.abs(a).sum():.6g}")
    if errors:
        print("\n".join(errors))
        sys.exit(1)


if __name__ == "__main__":
    main()
