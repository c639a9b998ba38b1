#!/usr/bin/env bash
# A stand-in for the CUDA binary that scripts/gpu_session.sh drives on a lent GPU: it answers
# each command the session gives with output of the shape sslhost's has, so that
# tests/gpu_session.rs can check the session's own logic (its stages, the self-test's gate,
# the rows it writes, its comparisons) on a machine without a GPU.
#
#   FAKE_SELFTEST=pass|fail   what the cuDNN self-test says
#   FAKE_SELFTEST_STREAM=pass|fail
#                             what it says under SSLHOST_CUDNN_ORDER=stream (default: the same)
#   FAKE_NO_CUPTI=1           `stream` falls back to `signal`, as without CUPTI
#   FAKE_GRAPH_DIFFERS=1      a run under SSLHOST_CAPTURE_GRAPH=1 logs other losses
#   FAKE_BENCH_SECONDS=N      a bench takes N seconds before its rows
set -euo pipefail
echo "$*" >> "${FAKE_LOG:-/dev/null}"

option() { # option NAME DEFAULT ARGS..: the value after --NAME in ARGS
    local name=$1 value=$2
    shift 2
    while [ $# -gt 0 ]; do
        if [ "$1" = "--$name" ] && [ $# -gt 1 ]; then value=$2; fi
        shift
    done
    echo "$value"
}

case "$1" in
    gpu-selftest)
        if [ "${2:-}" = --help ]; then
            echo "      --capture-only  the captured step alone"
        elif [[ " $* " == *" --capture-only "* ]]; then
            [ "${SSLHOST_GPU_BATCH_NORM:-burn}" != cudnn ] \
                || echo "INFO cuDNN's calls are ordered with cubecl's kernels by \`${SSLHOST_CUDNN_ORDER:-sync}\`"
            echo "capture: recorded; replayed losses equal the eager ones; eager 40.0 ms, replayed 30.0 ms"
        else
            want=${FAKE_SELFTEST:-pass}
            [ "${SSLHOST_CUDNN_ORDER:-sync}" != stream ] || want=${FAKE_SELFTEST_STREAM:-$want}
            passed=false
            [ "$want" != pass ] || passed=true
            order=${SSLHOST_CUDNN_ORDER:-sync}
            [ "$order" != stream ] || [ "${FAKE_NO_CUPTI:-0}" != 1 ] || order=signal
            echo "conv 3x3 64->64 ok"
            echo "{\"selftest\":\"gpu_kernels\",\"cudnn_order\":\"$order\",\"passed\":$passed}"
        fi
        ;;
    bench)
        sleep "${FAKE_BENCH_SECONDS:-0}"
        method=$(option method byol "$@")
        for variant in $(option variants nhwc:half "$@" | tr , ' '); do
            echo "info line before the row"
            capture=""
            if [ "$(option capture off "$@")" = replay ]; then
                how=replay
                [ "${SSLHOST_CAPTURE_GRAPH:-0}" != 1 ] || how=graph
                capture=",\"capture\":\"$how\",\"capture_report\":\"Replay: 1 step recorded, 24 steps replayed\""
            fi
            echo "{\"method\":\"$method\",\"batch_norm\":\"${variant%%:*}\",\"activations\":\"${variant#*:}\",\"median_ms\":25.0,\"img_per_s\":10240.0,\"first_step_ms\":1500.0,\"peak_mem_mb\":900.0,\"losses\":[1.5,1.25]$capture}"
        done
        ;;
    run)
        runs=$(option runs runs "$@")
        mkdir -p "$runs/run-0"
        loss=0.5
        [ "${SSLHOST_CAPTURE_GRAPH:-0}" != 1 ] || [ "${FAKE_GRAPH_DIFFERS:-0}" != 1 ] || loss=0.625
        for step in 0 5 10; do
            echo "{\"step\":$step,\"loss\":$loss,\"time\":$step.5}" >> "$runs/run-0/metrics.jsonl"
        done
        echo "steps 0..30: 30 steps in 3.0 s (2560 img/s)" >&2
        echo "step 10: loss $loss" >&2
        capture=$(option capture off "$@")
        [ "$capture" = off ] || echo "capture $capture: 30 of 30 steps make the same 90 tensor calls" >&2
        ;;
    *)
        echo "fake sslhost: unknown command $1" >&2
        exit 2
        ;;
esac
