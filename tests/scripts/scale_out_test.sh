#!/usr/bin/env bash
# Scale-out of sluice batch on the engines it targets, not a home-made cluster:
#  1. a real single-node Slurm (Debian's slurm-wlm + munge, configured and started here as root,
#     stopped on exit) runs scripts/slurm/sluice-batch-array.sbatch as a 2-task array with --mem;
#     `sluice batch-merge` of the two shards must equal a single-process run byte for byte;
#  2. the Kubernetes Indexed Job manifest is checked by kubectl (`apply --dry-run=client` when a
#     cluster answers; without one kubectl cannot apply even in client dry-run, so it parses the
#     manifest locally) and its container command is run once per JOB_COMPLETION_INDEX; the merge
#     must again equal the single run.
# Exit 77 (meson: SKIP) when not root or the packages are missing (scripts/install-deps.sh
# installs them).
set -euo pipefail
sluice=${SLUICE_BIN:?SLUICE_BIN is not set}
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${SLUICE_SHARED:-$root/../shared}
if [[ $(id -u) -ne 0 ]]; then echo "SKIP: Slurm daemons need root"; exit 77; fi
for p in slurmctld slurmd sbatch munged kubectl python3; do
  command -v "$p" >/dev/null || { echo "SKIP: $p not installed (scripts/install-deps.sh)"; exit 77; }
done

work=$(mktemp -d /tmp/sluice-scale-out.XXXXXX)
chmod 755 "$work"
cleanup() {
  [[ -n ${SLURM_CONF:-} ]] && scontrol shutdown >/dev/null 2>&1 || true
  sleep 1
  [[ -f $work/munge/munged.pid ]] && kill "$(cat "$work/munge/munged.pid")" 2>/dev/null || true
  for f in "$work"/run/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A small model with the real tokenizer, and a job with a malformed line among its requests.
"$sluice" synth -o "$work/model.gguf" --preset tiny --layers 3 --dense-layers 1 --expert-type q8_0 \
  --dense-type q8_0 --embed-type q8_0 --head-type q8_0 --seed 5 --quiet --tokenizer "$shared/models/deepseek-v3-tokenizer"
python3 - "$work/requests.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(24):
        chat = i % 2 == 1
        body = ({"messages": [{"role": "user", "content": f"Question {i}?"}]} if chat
                else {"prompt": f"Story number {i}:"})
        body.update({"max_tokens": 4 + i % 9, "temperature": 0 if i % 3 else 0.7, "seed": i})
        f.write(json.dumps({"custom_id": f"job-{i}", "method": "POST",
                            "url": "/v1/chat/completions" if chat else "/v1/completions", "body": body}) + "\n")
        if i == 9:
            f.write('{"custom_id": "broken", "method": \n')
PY
export SOURCE_DATE_EPOCH=1700000000
"$sluice" batch -m "$work/model.gguf" -i "$work/requests.jsonl" -o "$work/single.jsonl" -t 1 --max-seqs 4 \
  --progress-interval 1000 2>"$work/single.log"
lines=$(wc -l < "$work/single.jsonl")
[[ $lines -eq 25 ]] || { echo "FAIL: the single run wrote $lines records, expected 25"; exit 1; }

# ---- Slurm
host=$(hostname)
mkdir -p "$work"/{state,spool,log,run,munge,out}
chown munge:munge "$work/munge"
runuser -u munge -- /usr/sbin/munged --socket="$work/munge/munge.sock" --pid-file="$work/munge/munged.pid" \
  --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed"
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
write_conf() {  # $1: task plugin, $2: proctrack plugin
  cat > "$work/slurm.conf" <<CONF
ClusterName=sluicetest
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$work/run/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=16917
SlurmdPort=16918
ProctrackType=$2
TaskPlugin=$1
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  cat > "$work/cgroup.conf" <<CONF
ConstrainRAMSpace=yes
IgnoreSystemd=yes
CONF
}
start_slurm() {
  slurmctld -f "$work/slurm.conf"
  slurmd -f "$work/slurm.conf"
  for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && return 0; sleep 1; done
  echo "slurm did not come up:"; tail -n 20 "$work"/log/*.log; return 1
}
export SLURM_CONF=$work/slurm.conf
# --mem enforced by a memory cgroup (task/cgroup) where the machine allows; else Slurm still runs
# the array with --mem recorded, and the cgroup check below says it could not be made.
write_conf task/cgroup proctrack/cgroup
cgroup_enforced=1
if ! start_slurm || ! timeout 60 srun --mem=64M true 2>"$work/probe.log"; then
  cgroup_enforced=0
  echo "note: task/cgroup does not run here ($(head -c 200 "$work/probe.log")); using task/none"
  scontrol shutdown >/dev/null 2>&1 || true; sleep 2
  write_conf task/none proctrack/linuxproc
  start_slurm
fi
export SLUICE="$sluice"
timeout 300 sbatch --wait --array=0-1 --mem=1G --cpus-per-task=1 -o "$work/log/task-%a.log" \
  "$root/scripts/slurm/sluice-batch-array.sbatch" "$work/model.gguf" "$work/requests.jsonl" "$work/out" \
  --max-seqs 4 --progress-interval 1000 >/dev/null || { echo "FAIL: the Slurm array failed"; cat "$work"/log/task-*.log; exit 1; }
"$sluice" batch-merge -i "$work/requests.jsonl" -o "$work/slurm-merged.jsonl" "$work"/out/results.shard-*-of-2.jsonl
cmp "$work/single.jsonl" "$work/slurm-merged.jsonl" || { echo "FAIL: Slurm shards merged differ from the single run"; exit 1; }
for i in 0 1; do
  n=$(wc -l < "$work/out/results.shard-$i-of-2.jsonl")
  [[ $n -gt 0 ]] || { echo "FAIL: shard $i of 2 is empty"; exit 1; }
  budget=$(grep -o 'memory: budget [0-9.]* GiB' "$work/log/task-$i.log" | head -1 | grep -o '[0-9.]*' || echo "?")
  echo "slurm task $i: $n records, memory budget $budget GiB under --mem=1G"
  # With --mem enforced by a cgroup, the default budget comes from it (the cgroup limit, not the host).
  if [[ $cgroup_enforced == 1 ]]; then
    if [[ $budget == "?" ]] || ! python3 -c "import sys; sys.exit(0 if float('$budget') <= 1.0 else 1)"; then
      echo "FAIL: task $i planned a budget of $budget GiB under --mem=1G: not from the job's cgroup"; exit 1
    fi
  fi
done
echo "slurm: 2-task array merged equals the single run"

# ---- Kubernetes
manifest=$root/scripts/kubernetes/sluice-batch-job.yaml
if timeout 20 kubectl version >/dev/null 2>&1; then
  kubectl apply --dry-run=client -f "$manifest"
else
  echo "kubernetes: no API server to dry-run against (kubectl apply --dry-run=client needs one); parsing locally"
fi
kubectl label --local --dry-run=client -o json -f "$manifest" checked=yes > "$work/job.json"
python3 - "$work/job.json" "$work" "$sluice" <<'PY'
import json, os, subprocess, sys
job, work, sluice = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job", job["kind"]
spec = job["spec"]
assert spec["completionMode"] == "Indexed", spec
n = spec["completions"]
assert spec["parallelism"] == n, "parallelism should equal completions"
container = spec["template"]["spec"]["containers"][0]
env = {e["name"]: e["value"] for e in container["env"]}
assert int(env["SHARDS"]) == n, "SHARDS must equal completions"
# Each index runs the manifest's own command, with the volume's paths pointed at this test's files.
for index in range(n):
    run_env = {**os.environ, **env, "JOB_COMPLETION_INDEX": str(index), "SLUICE": sluice, "THREADS": "1",
               "MODEL": f"{work}/model.gguf", "REQUESTS": f"{work}/requests.jsonl", "OUTDIR": f"{work}/k8s"}
    subprocess.run(container["command"], env=run_env, check=True, stderr=subprocess.DEVNULL)
parts = [f"{work}/k8s/results.shard-{i}-of-{n}.jsonl" for i in range(n)]
subprocess.run([sluice, "batch-merge", "-i", f"{work}/requests.jsonl", "-o", f"{work}/k8s-merged.jsonl", *parts], check=True)
print(f"kubernetes: {n} indexes of the manifest's command merged")
PY
cmp "$work/single.jsonl" "$work/k8s-merged.jsonl" || { echo "FAIL: Kubernetes shards merged differ from the single run"; exit 1; }
echo "scale-out: OK"
