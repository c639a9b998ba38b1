#!/usr/bin/env bash
# sslhost against the PyTorch reference: the same training step (BYOL, MoCo v2, SimCLR) with the
# same settings, back to back, one Markdown table at the end.
#
#   scripts/bench.sh                                  # CPU, 2 threads, batch 64, 32x32, small + ResNet-18
#   scripts/bench.sh --device cuda                    # CUDA: batch 256, ResNet-18, all cores
#   scripts/bench.sh --threads 4 --methods byol --widths 16,32,64,128 --steps 10
#
# Options (each passed to both benches): --device cpu|cuda, --precision auto|f32|bf16 (auto:
# bf16 products on CUDA, f32 on the CPU), --methods LIST, --depth N,
# --batch N, --image N, --widths W1,W2,W3,W4 (repeatable: one row per network), --warmup N,
# --steps N; and --threads N (default 2 on the CPU, all cores on CUDA: OMP_NUM_THREADS,
# MKL_NUM_THREADS, RAYON_NUM_THREADS and torch's threads), --sslhost BIN (default
# target/release/sslhost), --out FILE (every result as a JSON line; default
# target/bench-results.jsonl), --capture off|replay|graph (sslhost's step as it runs, replayed
# from a recorded one, or replayed through a CUDA graph: `sslhost bench --capture replay`,
# with SSLHOST_CAPTURE_GRAPH=1 for graph; PyTorch's step runs as it comes).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cpu
precision=auto
threads=
methods=byol,moco,simclr
depth=18
batch=
image=32
widths=()
warmup=2
steps=6
sslhost=target/release/sslhost
out=target/bench-results.jsonl

while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --precision) precision=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --methods) methods=$2; shift 2 ;;
        --depth) depth=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --image) image=$2; shift 2 ;;
        --widths) widths+=("$2"); shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --sslhost) sslhost=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --capture) capture=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$device" = cpu ]; then
    batch=${batch:-64}
    threads=${threads:-2}
    [ ${#widths[@]} -gt 0 ] || widths=(16,32,64,128 64,128,256,512)
else
    batch=${batch:-256}
    threads=${threads:-$(nproc)}   # host threads feeding the GPU
    [ ${#widths[@]} -gt 0 ] || widths=(64,128,256,512)
fi
if [ ! -x "$sslhost" ]; then
    echo "bench.sh: $sslhost not found; build it with cargo build --release" >&2
    exit 2
fi

case "${capture:=off}" in
    off|replay) ;;
    graph) capture=replay; export SSLHOST_CAPTURE_GRAPH=1 ;;
    *) echo "bench.sh: --capture takes off, replay or graph, not $capture" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
: > "$out"
common=(--device "$device" --precision "$precision" --depth "$depth" --batch "$batch" --image "$image"
        --warmup "$warmup" --steps "$steps")
for w in "${widths[@]}"; do
    for method in ${methods//,/ }; do
        echo "== $method widths $w batch $batch ${image}x${image} on $device, $threads threads" >&2
        "$sslhost" bench "${common[@]}" --method "$method" --widths "$w" --capture "$capture" | tail -n 1 \
            | sed 's/^{/{"impl":"sslhost",/' >> "$out"
        tail -n 1 "$out" >&2
        python3 scripts/reference/ssl_step.py "${common[@]}" --method "$method" --widths "$w" \
            --threads "$threads" | tail -n 1 >> "$out"
        tail -n 1 "$out" >&2
    done
done

python3 - "$out" "$threads" <<'EOF'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
ours = {(r["method"], r["model"], r["batch"]): r for r in rows if r["impl"] == "sslhost"}
torch = {(r["method"], r["model"], r["batch"]): r for r in rows if r["impl"] == "pytorch"}
print(f"\n{rows[0]['device']} ({rows[0]['precision']} products), {sys.argv[2]} threads, {rows[0]['image']}x{rows[0]['image']}, "
      f"median of {rows[0]['steps']} steps after {rows[0]['warmup']} warm-up\n")
print("| method | model | batch | sslhost step | sslhost ms | PyTorch ms | ratio | sslhost img/s | Rhai share | sslhost first step |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
for key, r in ours.items():
    t = torch.get(key)
    theirs = f"{t['median_ms']:.0f}" if t else "n/a"
    ratio = f"{r['median_ms'] / t['median_ms']:.2f}x" if t else "n/a"
    print(f"| {r['method']} | {r['model']} | {r['batch']} | {r.get('capture', 'eager')} | "
          f"{r['median_ms']:.0f} | {theirs} | {ratio} | {r['img_per_s']:.1f} | "
          f"{100 * r['rhai_share']:.3f}% | {r.get('first_step_ms', float('nan')) / 1000:.1f} s |")
EOF
