"""Reads a checkpoint written by trainer/checkpoint.cpp with h5py and checks it against what the C++
side says it wrote.

usage: h5py_read.py CKPT.h5 MODULE EXPECTED_A.bin EXPECTED_CONFIG.txt STEP

EXPECTED_A.bin holds adapter A of MODULE as raw little-endian float32 values. The script checks that
/adapters/MODULE/A equals them bit for bit (shape [d_in, rank] from the /adapters 'rank' attribute),
that B has shape [rank, d_out], that string attributes read back as Python str (format, config_yaml)
and that the step attribute matches. It also checks the integrity block the file starts with (an
HDF5 user block of 512 bytes, as h5py reports it) against a CRC-64/XZ computed here, independently
of the C++ code. Exit 0 when everything matches, 1 with a message otherwise, 77 when h5py is not
installed.
"""
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"h5py unavailable: {e}")
    sys.exit(77)


def crc64_xz(data: bytes) -> int:
    """CRC-64/XZ, bit by bit from the reflected ECMA-182 polynomial (slow, but short and plain)."""
    table = []
    for b in range(256):
        r = b
        for _ in range(8):
            r = (r >> 1) ^ 0xC96C5795D7870F42 if r & 1 else r >> 1
        table.append(r)
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def check_integrity_block(path, userblock_size, errors):
    assert crc64_xz(b"123456789") == 0x995DC9BBDF1939FA
    with open(path, "rb") as f:
        data = f.read()
    if userblock_size != 512:
        errors.append(f"h5py reports a {userblock_size}-byte user block, expected 512")
        return
    expected_text = (f"lora-checkpoint integrity block\n"
                     f"crc64-xz of bytes 512..end: {crc64_xz(data[512:]):016x}\n"
                     f"file bytes: {len(data)}\n").encode()
    expected = expected_text + b"\0" * (512 - len(expected_text))
    if data[:512] != expected:
        errors.append(f"integrity block {data[:120]!r} != {expected[:120]!r}")


def main():
    path, module, expected_a_path, expected_config_path, step = sys.argv[1:6]
    errors = []
    with h5py.File(path, "r") as f:
        check_integrity_block(path, f.userblock_size, errors)
        if int(f.attrs["format_version"]) != 2:
            errors.append(f"format_version {f.attrs['format_version']}")
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
