#!/usr/bin/env bash
# The ONE script for a borrowed GPU machine (no meson deps, no registries there). From a copy of
# the repo, in one call well under ten minutes, it:
#   1. builds the CUDA tests and bench with nvcc + g++ directly (header-only deps from
#      .device-deps, made here first by scripts/prepare-device-deps.sh and carried),
#   2. runs the host decoder test and every CUDA test against the CPU backend (the very tests CI
#      runs on the emulated device, cudaemu/: tests/cuda/cuda_test.cpp, forward_test.cpp, codec_test.cu),
#   3. runs the CUDA test under compute-sanitizer memcheck when the tool is present and works,
#   4. runs bench_cuda,
#   5. with a carried sluice binary (.device-deps/bin/sluice, SLUICE_CARRY_BUILD=... scripts/
#      prepare-device-deps.sh): writes a synthetic DeepSeek-V3-shaped Q4_K GGUF (5 layers, 27.6 GB)
#      to local disk, runs bench-io --to-device on it, then sluice bench --device cuda streaming it
#      from disk into VRAM with --trace (prefill 16/128, decode),
# and writes logs plus summary.json under $OUT (./device-out when OUT is unset; at most 8 files,
# as the device tool returns no more: device-check.log, build.log, tests.log, bench.log,
# streaming.log, trace.json, summary.json). Exit: 0 ok, 1 failed, 77 built but no device to run on.
#
#   device run:  bash scripts/device-check.sh        (carry: .device-deps)
#   here:        OUT=/tmp/dc bash scripts/device-check.sh   (builds, then reports the skip)
# Env: GPU_ARCH=90 to override the detected SM, JOBS=N, SKIP_SANITIZER=1, BENCH_ARGS="--quick".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
OUT=${OUT:-$root/device-out}
mkdir -p "$OUT"
build=${BUILD_DIR:-/tmp/sluice-device-build}
mkdir -p "$build/obj"
deps=$root/.device-deps/include
jobs=${JOBS:-$(nproc)}
start_all=$(date +%s)
steps_json=""

log() { echo "[device-check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/device-check.log"; }
# step NAME LOGFILE CMD...: runs CMD with output to $OUT/LOGFILE, records rc and seconds.
step() {
  local name=$1 logfile=$2; shift 2
  local t0=$(date +%s)
  log "$name: $*"
  echo "==== $name: $*" >>"$OUT/$logfile"
  "$@" >>"$OUT/$logfile" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  log "$name: rc=$rc in ${dt}s (log $logfile)"
  steps_json+="${steps_json:+, }{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $dt, \"log\": \"$logfile\"}"
  return $rc
}
write_summary() {
  local status=$1
  local device_name=""
  command -v nvidia-smi >/dev/null && device_name=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
  local bench_json=null to_device_json=null stream_json=null
  [[ -s $build/bench.json ]] && bench_json=$(cat "$build/bench.json")
  [[ -s $build/to_device.json ]] && to_device_json=$(cat "$build/to_device.json")
  [[ -s $build/bench_device.json ]] && stream_json=$(cat "$build/bench_device.json")
  cat >"$OUT/summary.json" <<JSON
{"status": "$status", "device": "$device_name", "gpu_arch": "$arch", "seconds": $(( $(date +%s) - start_all )),
 "commit": "$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)",
 "steps": [$steps_json],
 "bench": $bench_json,
 "bench_io_to_device": $to_device_json,
 "bench_device_streaming": $stream_json}
JSON
  log "summary: $status (summary.json)"
}

# --- toolchain --------------------------------------------------------------------------
for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do [[ -d $d ]] && export PATH="$d:$PATH"; done
arch=${GPU_ARCH:-}
if [[ -z $arch ]] && command -v nvidia-smi >/dev/null; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
fi
arch=${arch:-90}
if ! command -v nvcc >/dev/null; then log "nvcc not found"; write_summary "no-nvcc"; exit 1; fi
if [[ ! -f $deps/fmt/format.h || ! -f $deps/doctest/doctest.h ]]; then
  log "missing $deps: run scripts/prepare-device-deps.sh on the dev machine and carry .device-deps"
  write_summary "no-deps"; exit 1
fi
cuda_home=$(dirname "$(dirname "$(command -v nvcc)")")
# cuBLAS: the toolkit's, else the pip wheel's (the GPU image ships nvidia-cublas for PyTorch).
cublas_dir=""
for d in "$cuda_home/lib64" "$cuda_home/targets/x86_64-linux/lib"; do
  [[ -e $d/libcublas.so ]] && { cublas_dir=$d; break; }
done
if [[ -z $cublas_dir ]]; then
  so=""
  for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    so=$(find "$sp/nvidia" -name 'libcublas.so.*' 2>/dev/null | head -1)
    [[ -n $so ]] && break
  done
  if [[ -n $so ]]; then
    mkdir -p "$build/lib"
    ln -sf "$so" "$build/lib/libcublas.so"
    ln -sf "$(ls "$(dirname "$so")"/libcublasLt.so.* | head -1)" "$build/lib/libcublasLt.so"
    cublas_dir=$build/lib
    export LD_LIBRARY_PATH="$(dirname "$so"):${LD_LIBRARY_PATH:-}"
  fi
fi
# The toolkit's lib64 may not be in ld.so.conf there.
export LD_LIBRARY_PATH="${cublas_dir:+$cublas_dir:}$cuda_home/lib64:${LD_LIBRARY_PATH:-}"
log "nvcc $(nvcc --version | tail -1), g++ $(g++ -dumpfullversion), sm_$arch, cuBLAS in ${cublas_dir:-?}, $jobs jobs"
{ nvidia-smi 2>&1 || true; } >>"$OUT/device-check.log"  # $OUT returns at most 8 files

# --- build ------------------------------------------------------------------------------
common=(-I"$root" -I"$deps" -I"$cuda_home/include" -DFMT_HEADER_ONLY -DNDEBUG -DSLUICE_HAVE_CUDA=1 '-DSLUICE_VERSION="device-check"')
cxx_flags=(-std=c++20 -O3 -pthread "${common[@]}")
nvcc_flags=(-std=c++20 -O3 --expt-relaxed-constexpr -gencode "arch=compute_$arch,code=sm_$arch" "${common[@]}")
# Source lists come from the meson files, so this build follows the real one.
meson_sources() {  # meson_sources DIR EXT: the files('...') entries of DIR/meson.build with that extension
  grep -oE "'[A-Za-z0-9_./-]+\.$2'" "$1/meson.build" | tr -d "'" | sed "s|^|$1/|"
}
mapfile -t host_sources < <(meson_sources core cpp; meson_sources kernels cpp; meson_sources kernels/cpu cpp;
                            meson_sources kernels/cuda cpp | grep -v device_stub)
host_sources+=(tests/doctest_main.cpp tests/cuda/cuda_main.cpp tests/cuda/cuda_test.cpp bench/bench_cuda.cpp)
mapfile -t cuda_sources < <(meson_sources kernels/cuda cu)
cuda_sources+=(tests/cuda/codec_test.cu)

compile_all() {
  local f
  for f in "${host_sources[@]}"; do
    echo "g++ ${cxx_flags[*]@Q} -c ${f@Q} -o ${build@Q}/obj/$(echo "$f" | tr / _).o"
  done
  for f in "${cuda_sources[@]}"; do
    echo "nvcc ${nvcc_flags[*]@Q} -c ${f@Q} -o ${build@Q}/obj/$(echo "$f" | tr / _).o"
  done
} 
build_step() {
  rm -f "$build"/obj/*.o
  compile_all | xargs -P "$jobs" -I{} bash -c '{} || exit 255' || return 1
  local o=$build/obj
  local libs=("$o"/core_*.o "$o"/kernels_*.o)
  local link=(-L"${cublas_dir:-$cuda_home/lib64}" -lcublas -lpthread)  # nvcc links cudart statically
  nvcc -o "$build/cuda_test" "$o/tests_cuda_cuda_test.cpp.o" "$o/tests_cuda_cuda_main.cpp.o" "${libs[@]}" "${link[@]}" &&
  nvcc -o "$build/cuda_codec_test" "$o/tests_cuda_codec_test.cu.o" "$o/tests_doctest_main.cpp.o" "${libs[@]}" "${link[@]}" &&
  nvcc -o "$build/bench_cuda" "$o/bench_bench_cuda.cpp.o" "${libs[@]}" "${link[@]}"
}
if ! step build build.log build_step; then
  tail -30 "$OUT/build.log"
  write_summary "build-failed"; exit 1
fi

# --- tests ------------------------------------------------------------------------------
export SLUICE_TEST_DATA=$root/tests/data
status=ok
step codec_test tests.log "$build/cuda_codec_test" || status=failed
step cuda_test tests.log timeout 300 "$build/cuda_test" --duration=true
rc=$?
if [[ $rc -eq 77 ]]; then
  status=skipped-no-device
  log "cuda_test: $(grep -m1 skipped "$OUT/tests.log")"
elif [[ $rc -ne 0 ]]; then
  status=failed
fi
tail -5 "$OUT/tests.log"

# The whole-forward check (engine + formats need fmt, json, liburing... that the GPU machine
# lacks): a binary built here for sm_90 by scripts/prepare-device-deps.sh, carried with libfmt.
forward_bin=$root/.device-deps/bin/cuda_forward_test
if [[ $status != skipped-no-device && -x $forward_bin ]]; then
  export LD_LIBRARY_PATH="$root/.device-deps/lib:$cuda_home/lib64:${cublas_dir:+$cublas_dir:}${LD_LIBRARY_PATH:-}"
  step forward_test tests.log timeout 300 "$forward_bin" --duration=true || status=failed
  tail -5 "$OUT/tests.log"
elif [[ $status != skipped-no-device ]]; then
  log "forward_test: no carried .device-deps/bin/cuda_forward_test (SLUICE_CARRY_BUILD=... scripts/prepare-device-deps.sh)"
fi

if [[ $status != skipped-no-device ]]; then
  if [[ -z ${SKIP_SANITIZER:-} ]] && command -v compute-sanitizer >/dev/null; then
    # memcheck: out-of-bounds and misaligned device accesses in every kernel the tests launch.
    step memcheck tests.log timeout 240 compute-sanitizer --tool memcheck --error-exitcode 86 "$build/cuda_test"
    case $? in
      0) ;;
      86) status=failed; log "memcheck found errors" ;;
      *) log "memcheck did not complete (tool or device refused; see tests.log); not counted as a failure" ;;
    esac
  else
    log "compute-sanitizer not run"
  fi
  step bench bench.log timeout 240 "$build/bench_cuda" --json "$build/bench.json" ${BENCH_ARGS:-} || status=failed
  cat "$OUT/bench.log"
  # The streaming pipeline end to end: disk -> pinned host -> VRAM, overlapped with compute.
  sluice=$root/.device-deps/bin/sluice
  if [[ -x $sluice ]]; then
    export LD_LIBRARY_PATH="$root/.device-deps/lib:$LD_LIBRARY_PATH"
    model=${MODEL_DIR:-/tmp}/sluice-v3-5L-q4k.gguf
    step version streaming.log "$sluice" version
    [[ -f $model ]] || step synth streaming.log timeout 300 "$sluice" synth -o "$model" --preset v3 --layers 5 \
      --dense-layers 1 --expert-type q4_k --seed 1 --quiet --tokenizer "$root/.device-deps/tokenizer" || status=failed
    if [[ -f $model ]]; then
      step bench_io_to_device streaming.log timeout 120 "$sluice" bench-io "$model" --to-device --rounds 2 --seconds 3 \
        --json || status=failed
      grep '^{' "$OUT/streaming.log" | tail -1 >"$build/to_device.json"
      sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
      step bench_device streaming.log timeout 300 "$sluice" bench -m "$model" --device cuda --prompt-lengths 16,128 \
        --decode 8 --batch-sizes 1 --json --trace "$OUT/trace.json" || status=failed
      sed -n '/^{/,$p' "$OUT/streaming.log" | python3 -c 'import json,sys; t=sys.stdin.read(); i=t.rfind("\n{\n"); print(json.dumps(json.loads(t[i+1:] if i>=0 else t)))' \
        >"$build/bench_device.json" 2>/dev/null || true
    fi
  else
    log "streaming: no carried .device-deps/bin/sluice (SLUICE_CARRY_BUILD=... scripts/prepare-device-deps.sh)"
  fi
fi
write_summary "$status"
cat "$OUT/summary.json"
[[ $status == failed ]] && exit 1
[[ $status == skipped-no-device ]] && exit 77  # never a silent pass
exit 0
