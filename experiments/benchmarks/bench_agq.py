"""AGQ (the log quantizer's scale search) on one attention-like map: time per site and agreement.

The map is a softmax of q·kᵀ/√d over a square token grid, with a distance bias, heads from flat to
peaked (SAM-B's global attention is 12 heads × 4096 × 4096, d = 64: the default). Rows: the search
of the code before the change (``--baseline DIR``: exhaustive, every row), this code's exhaustive
search, and this code's search sampled to ``--numel`` map elements (the log quantizer's ``search_numel``;
the default, 2^22, samples 85 rows per head of SAM-B's maps). Columns: seconds for all τ
(1, 2, 4), the chosen τ, its s, s against the first row's, and the exact objective at that s
against the first row's (the search minimises it; > 1 is worse). Each row runs in its own process.

    python experiments/benchmarks/bench_agq.py --heads 12 --side 32 --numel 1048576 --baseline ../main  # quick
    python experiments/benchmarks/bench_agq.py --bits 8                                                 # SAM-B size
"""

from __future__ import annotations

import argparse
import math
import time

from trees import TREE, add_tree_arguments, run_worker, serve, trees

TAUS = (1.0, 2.0, 4.0)


def attention_map(heads: int, side: int, d: int, seed: int, device: str):
    import torch

    g = torch.Generator().manual_seed(seed)
    n = side * side
    q = torch.randn(heads, n, d, generator=g)
    k = torch.randn(heads, n, d, generator=g)
    v = torch.randn(heads, n, d, generator=g)
    ys, xs = torch.div(torch.arange(n), side, rounding_mode="floor"), torch.arange(n) % side
    distance = ((ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2).float().sqrt()
    logits = torch.linspace(0.3, 2.5, heads)[:, None, None] * (q @ k.transpose(1, 2)) / math.sqrt(d)
    logits -= torch.linspace(0.0, 0.6, heads)[:, None, None] * distance
    return torch.softmax(logits, dim=-1).to(device), v.to(device)


def worker(args: argparse.Namespace) -> dict:
    import torch

    from quantizers.functional.log import LogGrid, agq_search, attention_output_error

    torch.set_num_threads(args.threads)
    attn, v = attention_map(args.heads, args.side, args.dim, 0, args.device)
    extra = {}
    if args.sample is not None:  # this tree only (a baseline may not have sample_rows)
        from quantizers.functional.log import sample_rows

        extra = {"max_rows": sample_rows(attn.shape, args.sample)}
    start = time.perf_counter()
    found = [agq_search(attn, v, args.bits, tau, 2.4, **extra) for tau in TAUS]
    seconds = time.perf_counter() - start
    chosen = min(range(len(TAUS)), key=lambda i: found[i][1])
    exact = attention_output_error(attn, v, LogGrid.build(found[chosen][0], TAUS[chosen], args.bits), 2.4)
    return {"seconds": seconds, "tau": TAUS[chosen], "scale": found[chosen][0], "objective": exact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--side", type=int, default=64, help="tokens per side (N = side²)")
    parser.add_argument("--dim", type=int, default=64, help="head dimension d")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--numel", type=int, default=1 << 22, help="map elements of the sampled search")
    parser.add_argument("--sample", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    add_tree_arguments(parser)
    args = parser.parse_args()
    if serve(worker, args, args.role):
        return
    common = ["--role", "worker", "--heads", str(args.heads), "--side", str(args.side), "--dim", str(args.dim),
              "--bits", str(args.bits), "--threads", str(args.threads), "--device", args.device]
    runs = [(f"exhaustive ({label})", tree, []) for label, tree in trees(args.baseline)]
    from quantizers.functional.log import sample_rows

    rows = sample_rows((args.heads, args.side**2, args.side**2), args.numel) or args.side**2
    runs.append((f"{rows} rows/head (after)", TREE, ["--sample", str(args.numel)]))
    results = [(name, run_worker(__file__, tree, common + extra)) for name, tree, extra in runs]
    first = results[0][1]
    tokens = args.side * args.side
    print(f"{args.heads} x {tokens} x {tokens} map, d {args.dim}, {args.bits} bits, taus {TAUS}, "
          f"{args.threads} threads, {args.device}")
    print(f"{'search':<28} {'seconds':>8} {'tau':>5} {'s':>9} {'s/first-1':>10} {'objective/first':>16}")
    for name, r in results:
        print(f"{name:<28} {r['seconds']:>8.2f} {r['tau']:>5g} {r['scale']:>9.5f} "
              f"{r['scale'] / first['scale'] - 1:>+10.4f} {r['objective'] / first['objective']:>16.4f}")


if __name__ == "__main__":
    main()
