"""The markdown summary of bench/multihost.sh, from its manifest and the runs' metrics.jsonl.

Per run: the median over the logged steps after the first WARMUP of the step time
(tokens per step / tokens_per_s) and of comm_exposed_ms_per_step. Per configuration: the median
over its repeats, with every run's value beside it.

usage: summarize_multihost.py MANIFEST WARMUP DATA_SOURCE SECONDS
"""
import datetime
import json
import os
import platform
import statistics
import sys


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_stats(rec, warmup):
    rows = [json.loads(l) for l in open(os.path.join(rec["dir"], "metrics.jsonl")) if l.strip()]
    rows = [r for r in rows if r["step"] > warmup]
    if not rows:
        sys.exit(f"summarize_multihost: {rec['label']} has no steps after the first {warmup}")
    tokens_per_step = rec["hosts"] * 1 * 128  # ranks x micro-batch x seq_len (bench/multihost.sh)
    step_s = [tokens_per_step / r["tokens_per_s"] for r in rows]
    exposed_ms = [r["comm_exposed_ms_per_step"] for r in rows]
    return {
        "step_s": statistics.median(step_s),
        "exposed_ms": statistics.median(exposed_ms),
        "tok_s": statistics.median(r["tokens_per_s"] for r in rows),
        "bytes": rows[-1]["comm_bytes_per_step"],
        "n_steps": len(rows),
    }


def main():
    manifest, warmup, data_source, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    recs = [json.loads(l) for l in open(manifest) if l.strip()]
    probes = [r for r in recs if "probe" in r]
    runs = [r for r in recs if "label" in r]
    configs = {}
    for r in runs:
        r.update(run_stats(r, warmup))
        key = (r["rate"], r["hosts"], r["mode"], r["overlap"])
        configs.setdefault(key, []).append(r)

    def med(key, field):
        return statistics.median(r[field] for r in configs[key])

    def each(key, field, fmt):
        return ", ".join(fmt.format(r[field]) for r in configs[key])

    load = os.getloadavg()
    print(f"Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {cpu_name()}, "
          f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
          f"{len(runs)} runs in {seconds / 60:.0f} min; data: {data_source}.")
    print()
    print("Links (tbf on both ends of every veth link), one 200 MB TCP transfer node1 -> node2:")
    print()
    print("| tbf rate | achieved |")
    print("|---|---|")
    for p in probes:
        print(f"| {p['probe']} | {8 * p['bytes'] / p['seconds'] / 1e9:.2f} Gbit/s |")
    print()
    print(f"Shaped links, 3 hosts x 1 rank (medians over repeats of each run's median step after the "
          f"first {warmup}; every run in brackets):")
    print()
    print("| link | mode | overlap | all-reduce/step | step time s | exposed comm ms/step | exposed share |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(k for k in configs if k[1] == 3):
        rate, _, mode, overlap = key
        step, exposed = med(key, "step_s"), med(key, "exposed_ms")
        print(f"| {rate} | {mode} | {'on' if overlap else 'off'} | {configs[key][0]['bytes'] / 2**20:.2f} MiB "
              f"| {step:.2f} ({each(key, 'step_s', '{:.2f}')}) | {exposed:.1f} ({each(key, 'exposed_ms', '{:.1f}')}) "
              f"| {100 * exposed / 1000 / step:.2f}% |")
    print()
    weak = sorted({k[0] for k in configs if k[1] == 1})
    for rate in weak:
        base_key = (rate, 1, "lora", True)
        print(f"Weak scaling, LoRA, overlap on, links at {rate}, 1 rank per host, the same micro-batch per "
              f"rank (tokens/s of all ranks; efficiency = tok/s(N) / (N x tok/s(1)); with 2 cores, 3 ranks "
              f"can reach at most 2/3):")
        print()
        print("| hosts | tok/s | efficiency | runs (tok/s) |")
        print("|---|---|---|---|")
        base = med(base_key, "tok_s")
        for hosts in (1, 2, 3):
            key = (rate, hosts, "lora", True)
            if key not in configs:
                continue
            t = med(key, "tok_s")
            print(f"| {hosts} | {t:.1f} | {100 * t / (hosts * base):.0f}% | {each(key, 'tok_s', '{:.1f}')} |")
        print()
    print("Commands (run inside node1's namespaces; the hostfile lists node1..nodeN with slots=1):")
    print()
    seen = set()
    for r in runs:
        cmd = r["command"].replace(os.path.dirname(r["dir"].rstrip("/")), "$WORK")
        generic = " ".join(w for w in cmd.split() if "output_dir" not in w)
        if generic in seen:
            continue
        seen.add(generic)
        print(f"    {cmd}")


if __name__ == "__main__":
    main()
