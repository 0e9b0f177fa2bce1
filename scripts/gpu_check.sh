#!/usr/bin/env bash
# The GPU check, in one command that fits in 8 minutes on one H100 with nothing downloaded:
#  1. scripts/gpu_check.py: a randomly initialised ~1B Llama through reinforce, labels and unlearn in
#     bf16 (a few dozen steps each): tokens/s, MFU and peak memory per stage;
#  2. scripts/bench_speed.py on the same model: the stages against bare loops, and the labels memory;
#  3. FSDP through `accelerate launch` on this GPU: reinforce with a checkpoint, its weights against
#     the same run in one plain process.
# Each prints one JSON object last. Uses the Python that holds CUDA PyTorch (PYTHON=... to choose);
# whoharry's source is put on the path, so the project needs no install there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-python3}
work=${WHOHARRY_GPU_CHECK_DIR:-$(mktemp -d /tmp/whoharry-gpu-check.XXXXXX)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"
timeout 300 "$python" scripts/gpu_check.py --work "$work" "$@"
timeout 150 "$python" scripts/bench_speed.py --steps 10 --blocks 64 \
  --set model.name="$work/model" --set data.target="$work/target.txt" --set data.block_length=512 \
  --set data.retain=null --set unlearn.precision=bf16 --set unlearn.batch_size=8 \
  --set labels.precision=bf16 --set labels.batch_size=8 --set model.inference_dtype=bf16
common=(--set model.name="$work/model" --set data.target="$work/target.txt" --set data.block_length=512
        --set data.retain=null --set reinforce.max_steps=6 --set reinforce.save_every=3 --set reinforce.batch_size=4
        --set reinforce.precision=bf16 -q)
timeout 120 accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 \
  -m whoharry reinforce "${common[@]}" --out "$work/fsdp"
timeout 90 "$python" -m whoharry reinforce "${common[@]}" --out "$work/plain"
"$python" - "$work" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
work = Path(sys.argv[1])
fsdp, plain = (load_file(str(work / run / "reinforce" / "final" / "model.safetensors")) for run in ("fsdp", "plain"))
diff = max((fsdp[k].float() - plain[k].float()).abs().max().item() for k in plain)
print(json.dumps({"fsdp_vs_one_process_max_abs_weight_diff": diff, "same_keys": fsdp.keys() == plain.keys()}))
PY
