# shellcheck shell=bash
# Is there a usable NVIDIA GPU here? One answer for every script that needs it: setup.sh (which
# venv variant to install), test.sh (whether the CUDA tests run) and gpu-check.sh (whether the
# GPU figures can be measured). Source this file; it defines functions and sets nothing else.
#
# "Usable" means what the full venv needs: torch==2.11.0 from PyPI is built for CUDA 13.0 (cu130)
# and onnxruntime-gpu==1.31.1 for CUDA 13, so the driver must support CUDA 13.0. NVIDIA's CUDA 13.0
# release notes, section "CUDA Driver", table "CUDA Toolkit and Corresponding Driver Versions":
# CUDA 13.0 GA needs Linux x86_64 driver >= 580.65.06
# (https://docs.nvidia.com/cuda/archive/13.0.0/cuda-toolkit-release-notes/index.html).
# An older driver loads libtorch but every CUDA call fails with "driver too old", so such a
# machine gets the CPU variant.
PDIFF_CUDA_MIN_DRIVER=580.65.06

# pdiff_version_ge A B: true when dotted version A >= B, compared numerically field by field
# (580.65.06 >= 580.65.6; a missing field counts as 0). Fails (status 2) when A is not numeric.
pdiff_version_ge() {
  local a=$1 b=$2
  [[ $a =~ ^[0-9]+(\.[0-9]+)*$ ]] || return 2
  local -a x y
  IFS=. read -r -a x <<<"$a"
  IFS=. read -r -a y <<<"$b"
  local i n=$(( ${#x[@]} > ${#y[@]} ? ${#x[@]} : ${#y[@]} ))
  for ((i = 0; i < n; i++)); do
    local p=$((10#${x[i]:-0})) q=$((10#${y[i]:-0}))
    ((p > q)) && return 0
    ((p < q)) && return 1
  done
  return 0
}

# pdiff_detect_gpu: looks at the nvidia-smi found on PATH and sets
#   PDIFF_GPU_USABLE  1 or 0
#   PDIFF_GPU_REASON  one line saying why, naming what was found
#   PDIFF_GPU_NAME, PDIFF_GPU_DRIVER, PDIFF_GPU_COUNT  (empty / 0 when unknown)
# Always returns 0: callers read PDIFF_GPU_USABLE.
pdiff_detect_gpu() {
  PDIFF_GPU_USABLE=0 PDIFF_GPU_NAME= PDIFF_GPU_DRIVER= PDIFF_GPU_COUNT=0
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    PDIFF_GPU_REASON="no NVIDIA GPU: nvidia-smi is not on PATH"
    return 0
  fi
  local out status=0
  out=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1) || status=$?
  local first
  first=$(printf '%s\n' "$out" | sed -n '/[^[:space:]]/{p;q}')
  if [ "$status" -ne 0 ]; then
    # nvidia-smi exits 6 with "No devices were found" on a machine without a GPU.
    if printf '%s' "$out" | grep -qi 'no devices were found'; then
      PDIFF_GPU_REASON="no NVIDIA GPU: nvidia-smi lists none (${first})"
    else
      PDIFF_GPU_REASON="no usable NVIDIA GPU: nvidia-smi failed (exit $status): ${first:-no output}"
    fi
    return 0
  fi
  local lines
  lines=$(printf '%s\n' "$out" | grep -c '[^[:space:]]' || true)
  if [ "$lines" -eq 0 ]; then
    PDIFF_GPU_REASON="no NVIDIA GPU: nvidia-smi lists none"
    return 0
  fi
  PDIFF_GPU_COUNT=$lines
  # "NVIDIA H100 80GB HBM3, 590.48.01": the name may hold commas, the driver is the last field.
  PDIFF_GPU_NAME=$(printf '%s' "$first" | sed 's/,[^,]*$//; s/^[[:space:]]*//; s/[[:space:]]*$//')
  PDIFF_GPU_DRIVER=$(printf '%s' "$first" | sed 's/.*,//; s/[[:space:]]//g')
  local ge=0
  pdiff_version_ge "$PDIFF_GPU_DRIVER" "$PDIFF_CUDA_MIN_DRIVER" || ge=$?
  case $ge in
    0)
      PDIFF_GPU_USABLE=1
      PDIFF_GPU_REASON="$PDIFF_GPU_COUNT NVIDIA GPU(s), $PDIFF_GPU_NAME, driver $PDIFF_GPU_DRIVER (>= $PDIFF_CUDA_MIN_DRIVER for CUDA 13.0)"
      ;;
    1)
      PDIFF_GPU_REASON="NVIDIA driver $PDIFF_GPU_DRIVER ($PDIFF_GPU_NAME) is older than $PDIFF_CUDA_MIN_DRIVER, the minimum for CUDA 13.0 (torch 2.11.0 cu130, onnxruntime-gpu 1.31.1): the GPU is not used (CPU variant); upgrade the driver to use it"
      ;;
    *)
      PDIFF_GPU_REASON="no usable NVIDIA GPU: nvidia-smi reports driver version '${PDIFF_GPU_DRIVER}' for $PDIFF_GPU_NAME, which is not a version number"
      PDIFF_GPU_DRIVER=
      ;;
  esac
  return 0
}

# pdiff_wanted_variant: the venv variant this machine should have, after pdiff_detect_gpu.
# Sets PDIFF_VARIANT (full | lean) and PDIFF_VARIANT_REASON. PDIFF_LEAN=1 forces lean (CI).
pdiff_wanted_variant() {
  pdiff_detect_gpu
  if [ "${PDIFF_LEAN:-0}" = 1 ]; then
    PDIFF_VARIANT=lean
    PDIFF_VARIANT_REASON="PDIFF_LEAN=1 forces the lean CPU variant (GPU detection: $PDIFF_GPU_REASON)"
  elif [ "$PDIFF_GPU_USABLE" = 1 ]; then
    PDIFF_VARIANT=full
    PDIFF_VARIANT_REASON=$PDIFF_GPU_REASON
  else
    PDIFF_VARIANT=lean
    PDIFF_VARIANT_REASON=$PDIFF_GPU_REASON
  fi
}
