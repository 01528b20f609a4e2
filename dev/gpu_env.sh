# Sourced on the GPU machine before running tpfuse binaries built elsewhere: finds NCCL and
# cuBLASLt in the Python packages PyTorch ships with and puts them on the library path.
# NVLink multicast stays off for every process launched from here.
export NCCL_NVLS_ENABLE=0
_tpfuse_libs=$(python3 - <<'PY' 2>/dev/null
import importlib, os
dirs = []
for name in ("nvidia.nccl", "nvidia.cublas", "nvidia.cu13", "nvidia.cuda_runtime"):
    try:
        m = importlib.import_module(name)
    except Exception:
        continue
    for p in m.__path__:
        for sub in ("lib", "lib64"):
            d = os.path.join(p, sub)
            if os.path.isdir(d):
                dirs.append(d)
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${_tpfuse_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
