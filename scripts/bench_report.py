#!/usr/bin/env python3
"""Turns bench/results-*.jsonl (written by scripts/bench.sh) into the markdown tables of
BENCHMARKS.md: medians over the runs of each configuration."""
import json
import statistics
import sys
from collections import defaultdict


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["group"], r["label"], r["nodes"], r["fanout"])].append(r)

    print("| group | config | nodes | fanout | runs | ok | delivered msg/s | e2e p50 ms | e2e p99 ms | e2e p99.9 ms | ack p99 ms | node CPU s / 1000 msgs | nodes + Redis CPU s / 1000 msgs | Redis calls / msg (steady) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (group, label, nodes, fanout), rs in sorted(groups.items()):
        if group in ("connections", "instructions"):
            continue
        res = [r["result"] for r in rs]
        ok = sum(1 for x in res if x.get("ok"))
        e2e = [x.get("latency_us", {}).get("end_to_end", {}) for x in res]
        ack = [x.get("latency_us", {}).get("ack", {}) for x in res]
        cpu_per_k = [r["node_cpu_s"] * 1000.0 / r["result"]["received"]
                     for r in rs if r["result"].get("received")]
        total_per_k = [(r["node_cpu_s"] + r.get("redis_cpu_s", 0)) * 1000.0 / r["result"]["received"]
                       for r in rs if r["result"].get("received")]
        # Steady window: Redis calls per second (lease heartbeats etc.) against messages per
        # second, between the 4 s and 9 s samples of scripts/bench.sh.
        redis_per_msg = [r["redis_calls_steady_5s"] / 5.0 / r["result"]["throughput_per_s"]
                         for r in rs
                         if r["result"].get("throughput_per_s") and "redis_calls_steady_5s" in r]
        print(f"| {group} | {label} | {nodes} | {fanout} | {len(rs)} | {ok}/{len(rs)} "
              f"| {fmt(med([x.get('throughput_per_s') for x in res]))} "
              f"| {fmt(med([e.get('p50', 0) / 1000 for e in e2e]), 2)} "
              f"| {fmt(med([e.get('p99', 0) / 1000 for e in e2e]), 2)} "
              f"| {fmt(med([e.get('p99_9', 0) / 1000 for e in e2e]), 2)} "
              f"| {fmt(med([a.get('p99', 0) / 1000 for a in ack]), 2)} "
              f"| {fmt(med(cpu_per_k), 3)} | {fmt(med(total_per_k), 3)} | {fmt(med(redis_per_msg), 4)} |")

    # Marginal cost of a message: CPU between the two scaling rates over the messages between.
    marginal = defaultdict(dict)
    for (group, label, nodes, fanout), rs in groups.items():
        if group != "scaling":
            continue
        # "rate-1000 [build]": the rate, and the build tag (if any) that keeps builds apart.
        rate, _, tag = label.partition(" ")
        marginal[(tag, nodes, fanout)][rate] = (
            med([r["node_cpu_s"] + r.get("redis_cpu_s", 0) for r in rs]),
            med([r["result"].get("received") for r in rs]),
        )
    if marginal:
        print()
        print("| build | nodes | fanout | CPU s at 1000 msg/s | CPU s at 5000 msg/s | marginal CPU ms per 1000 messages (nodes + Redis) |")
        print("|---|---|---|---|---|---|")
        for (tag, nodes, fanout), m in sorted(marginal.items()):
            lo, hi = m.get("rate-1000"), m.get("rate-5000")
            if not lo or not hi or not hi[1] or not lo[1] or hi[1] == lo[1]:
                continue
            per_k = (hi[0] - lo[0]) * 1000.0 / (hi[1] - lo[1]) * 1000.0
            print(f"| {tag or '-'} | {nodes} | {fanout} | {fmt(lo[0], 2)} | {fmt(hi[0], 2)} | {fmt(per_k, 1)} |")

    # One row per label: a file with two builds (LABEL=...) shows each build on its own row.
    conns = defaultdict(list)
    for r in rows:
        if r["group"] == "connections":
            conns[r["label"]].append(r["result"])
    if conns:
        print()
        print("| label | idle connections | runs | opened (median) | connect rate /s | node CPU us per connect | node RSS bytes per connection |")
        print("|---|---|---|---|---|---|---|")
        for label, cs in conns.items():
            print(f"| {label} | {cs[0].get('requested')} | {len(cs)} "
                  f"| {fmt(med([c.get('connections') for c in cs]))} "
                  f"| {fmt(med([c.get('connect', {}).get('per_second') for c in cs]))} "
                  f"| {fmt(med([c.get('node_cpu_us_per_connect') for c in cs]))} "
                  f"| {fmt(med([c.get('rss_per_connection_bytes') for c in cs]))} |")

    ceiling_ratio(groups)
    instructions(rows)


def ceiling_ratio(groups):
    """wsroute's throughput as a share of the ceiling's, both from this file (one sitting)."""
    best = {}
    for (group, label, nodes, fanout), rs in groups.items():
        if group == "throughput":
            best[(label, fanout)] = med([r["result"].get("throughput_per_s") for r in rs])
    ceilings = [v for (label, fanout), v in best.items() if fanout == "ceiling" and v]
    if not ceilings:
        return
    ceiling = med(ceilings)
    print()
    print(f"| throughput (median) | msg/s | share of the ceiling ({fmt(ceiling)} msg/s) |")
    print("|---|---|---|")
    for (label, fanout), v in sorted(best.items()):
        if fanout != "ceiling" and v:
            print(f"| {label} ({fanout}) | {fmt(v)} | {v / ceiling:.2f} |")


def instructions(rows):
    """Instructions per delivered message (scripts/bench.sh instructions): the difference
    between the high-rate and the low-rate run of each build, node count and fanout."""
    runs = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["group"] != "instructions" or not r["result"].get("ok"):
            continue
        rate, _, tag = r["label"].partition(" ")
        runs[(tag, r["nodes"], r["fanout"])][int(rate.removeprefix("rate-"))].append(
            (r["instructions"], r["result"].get("received") or 0))
    if not runs:
        return
    print()
    print("| build | nodes | fanout | instructions, low rate run | instructions, high rate run | delivered (low / high) | instructions per delivered message (all nodes) |")
    print("|---|---|---|---|---|---|---|")
    for (tag, nodes, fanout), by_rate in sorted(runs.items()):
        if len(by_rate) < 2:
            continue
        lo, hi = min(by_rate), max(by_rate)
        (ilo, dlo), (ihi, dhi) = (
            (med([x[0] for x in by_rate[k]]), med([x[1] for x in by_rate[k]])) for k in (lo, hi))
        if dhi <= dlo:
            continue
        print(f"| {tag or '-'} | {nodes} | {fanout} | {fmt(ilo)} | {fmt(ihi)} | {fmt(dlo)} / {fmt(dhi)} "
              f"| {fmt((ihi - ilo) / (dhi - dlo))} |")


if __name__ == "__main__":
    main(sys.argv[1])
