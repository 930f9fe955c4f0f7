# Sourced by the other scripts: installs the Debian packages fqt needs, only when missing.
# Runs apt-get update once, and only if something must be installed.

fqt_packages_build=(cmake g++ make libeigen3-dev librandom123-dev zlib1g-dev libcli11-dev
  libdnnl-dev ocl-icd-opencl-dev)
fqt_packages_test=(catch2 libbenchmark-dev clang libclang-rt-14-dev libomp-14-dev
  libfuzzer-14-dev dataset-fashion-mnist gnuplot-nox libtorch-dev)
fqt_packages_run=(dataset-fashion-mnist gnuplot-nox)

fqt_ensure_packages() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}
