#!/usr/bin/env bash
# Installs, from Debian 12's packages, exactly what s0d builds and tests with. Idempotent: when
# everything is present it only checks and returns (well under a second).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libopenmpi-dev openmpi-bin            # MPI ranks (mpirun)
  libhdf5-dev                           # run files
  libprotobuf-dev protobuf-compiler     # job specs and messages
  libzmq3-dev cppzmq-dev                # control socket
  libgtest-dev libgmock-dev             # tests
  nlohmann-json3-dev                    # JSON (config.json, tokenizer.json, JSONL)
  libcli11-dev                          # command lines
  libspdlog-dev libfmt-dev              # logging
  libpcre2-dev                          # the tokenizer's Unicode-property regex
  libutf8proc-dev                       # NFC normalisation
  slurmctld slurmd slurm-client munge   # the Slurm test (tests/slurm/): a single-node Slurm
                                        # started by hand (launch/slurm/local-slurm.sh)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
