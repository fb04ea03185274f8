#!/usr/bin/env bash
# The deployment files: the Containerfile linted (hadolint), every YAML file linted
# (yamllint), the Kubernetes manifests validated strictly against the API's schemas (an
# unknown field — a typo — fails), the kustomization checked to name only files that
# exist, the alerting rules checked (promtool), and the image's runtime stage
# smoke-tested around a release build.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/ci-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r .ci/requirements.txt
fi

"$venv/bin/hadolint" Containerfile
"$venv/bin/yamllint" --strict -c .yamllint.yaml .yamllint.yaml compose.yaml manifest.yml deploy
mapfile -t resources < <("$venv/bin/python" - <<'PY'
import os, sys, yaml
with open("deploy/kubernetes/kustomization.yaml") as f:
    kustomization = yaml.safe_load(f)
for resource in kustomization["resources"]:
    path = os.path.join("deploy/kubernetes", resource)
    if not os.path.isfile(path):
        sys.exit(f"kustomization.yaml names {resource}, which does not exist")
    print(path)
PY
)
"$venv/bin/kubernetes-validate" --strict --quiet "${resources[@]}" deploy/kubernetes/secret.example.yaml

# The alerting rules, with promtool from Debian's prometheus package (unpacked, not
# installed: nothing is started). tests/integration/alerts.rs checks the metrics they name.
promtool=target/ci-promtool/usr/bin/promtool
if [ ! -x "$promtool" ]; then
  mkdir -p target/ci-promtool
  (cd target/ci-promtool \
    && { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus 2>/dev/null; }; } \
    && dpkg-deb -x prometheus_*.deb .)
fi
"$promtool" check rules deploy/prometheus/alerts.yaml
# Each alert fires from series that should fire it, and stays quiet for healthy ones.
(cd deploy/prometheus && "../../$promtool" test rules alerts.test.yaml)

# The image: no engine here can pull its base images or run it, so its runtime stage is
# assembled around a release build, built FROM scratch, and run with chroot.
if ! command -v podman >/dev/null; then
  apt-get update -qq && apt-get install -y -qq podman
fi
cargo build --release --locked --bin databricks-slack-bot
deploy/container/smoke.sh target/release/databricks-slack-bot
