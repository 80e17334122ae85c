#!/usr/bin/env bash
# One prepared run for a lent GPU machine (bare image: torch and transformers preinstalled, no network):
# correctness on CUDA first, then the speed tables, each a row appended to benchmarks/RESULTS.md.
#   bash benchmarks/gpu_run.sh            (on a CPU it runs the eager benchmarks only, as a dry run)
set -euo pipefail
cd "$(dirname "$0")/.."
# hf_gpt from this checkout, laid out as its wheel is (conversion/ as hf_gpt.conversion, which
# benchmarks/reference.py imports, and model_cards/ as hf_gpt.model_cards) with symlinks: nothing to install.
site="$(mktemp -d)"
mkdir "$site/hf_gpt"
for entry in hf_gpt/*; do ln -s "$PWD/$entry" "$site/hf_gpt/"; done
ln -s "$PWD/conversion" "$site/hf_gpt/conversion"
ln -s "$PWD/model_cards" "$site/hf_gpt/model_cards"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
PY
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if python -c "import pytest" 2>/dev/null; then  # the benchmarks check equal losses and tokens themselves too
        python -m pytest -q -p no:cacheprovider tests/test_reference_equivalence.py tests/test_generation.py -x
    fi
    python benchmarks/training_step.py
    python benchmarks/training_step.py --compile
    python benchmarks/generation_speed.py --precision bf16
    python benchmarks/generation_speed.py --precision fp32 --batches 1
    python benchmarks/generation_speed.py --fast --precision bf16 --batches 1,32  # StaticDecoder, CUDA graphs
    python benchmarks/generation_speed.py --fast --precision fp32 --batches 1
    python benchmarks/generation_speed.py --precision bf16 --static-compile
    python benchmarks/shakespeare_quality.py --max-steps 2000 --mixed-precision bf16 || true  # needs ../shared/data
else  # a dry run: its rows go to a scratch file, not RESULTS.md
    dry="${TMPDIR:-/tmp}/gpu_run_dry_run.md"
    python benchmarks/training_step.py --steps 2 --rounds 1 --results "$dry"
    python benchmarks/generation_speed.py --new-tokens 8 --rounds 1 --results "$dry"
    python benchmarks/generation_speed.py --fast --new-tokens 8 --rounds 1 --results "$dry"
fi
