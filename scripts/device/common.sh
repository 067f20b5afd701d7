# Source first in every GPU-machine script: Python packages the image lacks (carried wheels in
# .whl/), the package itself on PYTHONPATH, and the TTS engines (scripts/device/tts_env.sh).
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ! compgen -G ".whl/*.whl" > /dev/null; then
  echo "common.sh: no wheels in .whl/: carry .whl in this call (scripts/device/*.sh need them)" >&2
  exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests"
source scripts/device/tts_env.sh
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
nproc
