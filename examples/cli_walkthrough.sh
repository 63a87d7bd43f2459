#!/usr/bin/env bash
# The command line, end to end, on tiny built-in data (under a minute on a CPU):
#   bash examples/cli_walkthrough.sh [OUT_DIR]
set -euo pipefail
out=${1:-$(mktemp -d)}
tiny=(--set train.data.train=64 --set train.data.val=32 --set train.batch_size=16)

mtlc build specs/nddr.yaml                                   # stages × tasks, params, FLOPs
mtlc build specs/nddr.yaml --json > "$out/nddr.json"
mtlc profile specs/hard.yaml specs/cross_stitch.yaml specs/nddr.yaml --by task
mtlc diff specs/cross_stitch.yaml specs/nddr.yaml
mtlc viz specs/nddr.yaml -o "$out/nddr.dot"                  # .dot needs no graphviz binary
mtlc train specs/cross_stitch.yaml --epochs 1 --out "$out/run" "${tiny[@]}"
mtlc eval specs/cross_stitch.yaml --checkpoint "$out/run/last.pt" "${tiny[@]}"
mtlc viz specs/cross_stitch.yaml -o "$out/learned.dot" --checkpoint "$out/run/last.pt"
echo "everything is in $out"
