#!/usr/bin/env bash
# One prepared run for a lent GPU machine (bare image: torch and transformers preinstalled, no network):
# the speed tables, each a row appended to benchmarks/RESULTS.md, then the CUDA tests (tests/test_cuda.py);
# a failing step is named at the end and the run exits 1, the other steps still run.
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
failures=()
attempt() {  # a failing step is reported at the end; the others still run
    "$@" || failures+=("$*")
}
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    # The speed tables first: no run has measured them yet (each checks equal losses or tokens itself too).
    attempt python benchmarks/training_step.py
    attempt python benchmarks/training_step.py --compile
    attempt python benchmarks/generation_speed.py --precision bf16
    attempt python benchmarks/generation_speed.py --precision fp32 --batches 1
    attempt python benchmarks/generation_speed.py --fast --precision bf16 --batches 1,32  # StaticDecoder, CUDA graphs
    attempt python benchmarks/generation_speed.py --fast --precision fp32 --batches 1
    attempt python benchmarks/generation_speed.py --precision bf16 --static-compile
    # Then what only CUDA can check: kernels, CUDA graphs, fused AdamW, compiled and FSDP training with resume.
    attempt python -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
        tests/test_modeling.py::test_bad_token_ids_on_cuda_are_a_python_error_not_a_device_assert \
        tests/test_modeling.py::test_flash_attention_2_matches_sdpa
    if [ -f ../shared/data/tinyshakespeare.txt ]; then
        attempt python benchmarks/shakespeare_quality.py --max-steps 2000 --mixed-precision bf16
    fi
else  # a dry run: its rows go to a scratch file, not RESULTS.md
    dry="${TMPDIR:-/tmp}/gpu_run_dry_run.md"
    python benchmarks/training_step.py --steps 2 --rounds 1 --results "$dry"
    python benchmarks/generation_speed.py --new-tokens 8 --rounds 1 --results "$dry"
    python benchmarks/generation_speed.py --fast --new-tokens 8 --rounds 1 --results "$dry"
fi
if [ ${#failures[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failures[@]}"
    exit 1
fi
