#!/usr/bin/env bash
# The paper's run on a GPU box: unlearn Harry Potter from Llama-2-7b-chat (configs/llama2-7b.yaml).
#
#   scripts/paper_run.sh BOOKS.txt [OUT]
#
# BOOKS.txt is your copy of the books (not shipped). Every optimizer step sees 16 blocks of 512 tokens
# whatever the number of GPUs: grad_accum is set from it. Settings from the environment:
#   GPUS=N                 GPUs to use (default: every visible one)
#   ACCELERATE_CONFIG=F    accelerate config for several GPUs (default: configs/accelerate/fsdp.yaml)
#   LORA=R                 fine-tune LoRA adapters of rank R (one GPU or ddp.yaml), merged at the end
#   WHOHARRY=CMD           how to start whoharry (default: python -m whoharry)
# Reruns resume: finished stages are skipped, interrupted ones continue from their last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: scripts/paper_run.sh BOOKS.txt [OUT]  (BOOKS.txt: the target text, UTF-8)" >&2
  exit 2
fi
books=$(realpath "$1")
out=${2:-runs/llama2-7b}
gpus=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
gpus=$(( gpus > 0 ? gpus : 1 ))
per_gpu=4  # reinforce.batch_size and unlearn.batch_size in the config
global=16
accum=$(( global / (per_gpu * gpus) ))
accum=$(( accum > 0 ? accum : 1 ))
if [ $(( per_gpu * gpus * accum )) -ne $global ]; then
  echo "note: $gpus GPUs x $per_gpu blocks x grad_accum $accum = $(( per_gpu * gpus * accum )) blocks a step, not $global" >&2
fi
sets=(--set "data.target=$books" --set "reinforce.grad_accum=$accum" --set "unlearn.grad_accum=$accum")
if [ -n "${LORA:-}" ]; then
  # adapters learn at a higher rate than full fine-tuning; the weights are merged into final/
  sets+=(--set "reinforce.lora_rank=$LORA" --set "unlearn.lora_rank=$LORA"
         --set "reinforce.learning_rate=1e-4" --set "unlearn.learning_rate=3e-5")
fi
read -r -a whoharry <<< "${WHOHARRY:-python -m whoharry}"
config=configs/llama2-7b.yaml
if [ "$gpus" -gt 1 ]; then
  accelerate launch --config_file "${ACCELERATE_CONFIG:-configs/accelerate/fsdp.yaml}" --num_processes "$gpus" \
    -m whoharry unlearn --config "$config" --out "$out" "${sets[@]}"
else
  "${whoharry[@]}" unlearn --config "$config" --out "$out" "${sets[@]}"
fi
# the evaluation runs in one process (lm-eval benchmarks included: pip install -e ".[benchmarks]")
"${whoharry[@]}" eval --config "$config" --out "$out" "${sets[@]}"
