#!/usr/bin/env bash
# Fetch, as wheels into .whl/, the packages vgbench needs that the device machine's image lacks (its list:
# the device tool's KINDS.md), in the versions installed here, for its Python 3.12 on x86-64 Linux.
# bench/gpu_session.sh installs them there; the device call carries them (`carry: [".whl"]`).
#
#   bash bench/gpu_wheels.sh        # then: run "bash bench/gpu_session.sh" with carry [".whl"]
#
# The image has numpy, scipy, matplotlib, requests, cloudpickle, typing-extensions and PyYAML, so only these
# travel (about 2.5 MB). .whl/ is for this machine only: list it in .git/info/exclude, never commit it.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(pydantic pydantic-core annotated-types typing-inspection mnist1d submitit)
rm -rf .whl
for name in "${packages[@]}"; do
  version=$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  if [ -z "$version" ]; then
    echo "gpu_wheels: $name is not installed here; run pip install -e '.[test]' first" >&2
    exit 1
  fi
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$name==$version"
done
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
ls -1 .whl
du -sh .whl
