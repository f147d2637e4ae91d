#!/usr/bin/env bash
# Retrofitted depth recurrence at CPU scale (issue 9; spec shared/specs/recurrence.md), end to end from the CLI:
#   1. pretrain an 8-layer Llama-shaped byte-level model on local text (Python stdlib sources)
#   2. export it as an HF LlamaForCausalLM directory (save_pretrained)
#   3. retrofit it: prelude = layers 0-1, core = 4-5, coda = 6-7 (the paper's rule for --layers 2,2,2)
#   4. heal the recurrent model with the 1-sqrt curriculum to mean r = 4 (Muon + AdamW), 60 and 120 steps
#   5. keep training the static 8-layer model with the same optimiser for the same training FLOPs
#   6. r sweep of the healed model (CLI table + plot), then every model on the same held-out batches
# Usage: scripts/recurrence_recipe.sh [OUT_DIR] [RESULTS_DIR]   (1 thread per run; ~35 min wall on an idle 2-core box)
set -euo pipefail
OUT=${1:-runs/recurrence}
RESULTS=${2:-results/recurrence}
PY=${PY:-.venv/bin/python}
ARCHLAB="$PY -m archlab.cli"
PRE_STEPS=$($PY -c "import yaml; print(yaml.safe_load(open('configs/recurrence_pretrain.yaml'))['train']['steps'])")

$ARCHLAB train configs/recurrence_pretrain.yaml out_dir="$OUT" name=pretrain
$PY scripts/recurrence_recipe.py export "$OUT/pretrain" "$OUT/llama"
$ARCHLAB retrofit "$OUT/llama" --layers 2,2,2 --mean-recurrence 4 --out "$OUT/retrofit"
# healing (N steps) and the static baseline with the same training FLOPs are independent: side by side, 1 thread each
run_pair() {  # HEAL_NAME STATIC_NAME N
  local steps heal static
  steps=$($PY scripts/recurrence_recipe.py matched-steps configs/recurrence_heal.yaml configs/recurrence_static.yaml train.steps="$3")
  $ARCHLAB train configs/recurrence_heal.yaml out_dir="$OUT" name="$1" model.init_from="$OUT/retrofit" train.steps="$3" > "$OUT/$1.log" 2>&1 &
  heal=$!
  $ARCHLAB train configs/recurrence_static.yaml out_dir="$OUT" name="$2" model.init_from="$OUT/pretrain/step_$PRE_STEPS" train.steps="$steps" > "$OUT/$2.log" 2>&1 &
  static=$!
  wait $heal
  wait $static
}
run_pair heal static 60
run_pair heal120 static120 120
$ARCHLAB eval "$OUT/heal120" --recurrences 1,2,4,8,16 --batches 1
$PY scripts/recurrence_recipe.py report "$OUT" "$RESULTS" heal:static heal120:static120
