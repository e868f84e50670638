#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, idempotently:
#   - cargo-nextest (the test runner of scripts/test.sh), with cargo install when missing
#   - Debian: prometheus (prometheus + promtool, for the metrics tests); iproute2, util-linux,
#     hostname and python3 for the Kubernetes test bed (kubebed: network namespaces, mount
#     namespaces, setpriv; its pod tests run /usr/bin/python3), openssl (the real-Spark TLS
#     test's PKCS12 key store; Java's keytool makes its trust store)
#   - Python venv .venv: moto[server] (S3-protocol server for the object-store tests, run through
#     scripts/moto-server.py) and
#     pyspark (real Spark against the shuffle service's Spark protocol; needs Java 17),
#     kubernetes-validate (strict schema validation of k8s/)
# A component that cannot be installed is reported; the tests needing it are then skipped
# (counted as ignored by cargo test), never passed.
set -uo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.5"
PYSPARK_VERSION="4.3.0"
KUBERNETES_VALIDATE_VERSION="1.37.0"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test-deps: installing cargo-nextest with cargo install"
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS cargo install --locked cargo-nextest >/tmp/test-deps-nextest.log 2>&1 \
    || echo "test-deps: cargo install cargo-nextest FAILED (see /tmp/test-deps-nextest.log)"
fi

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
[ -x /usr/bin/setpriv ] && [ -x /usr/bin/unshare ] || need_apt+=(util-linux)
[ -x /usr/bin/hostname ] || need_apt+=(hostname)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-deps: installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}"; } >/tmp/test-deps-apt.log 2>&1 \
      || echo "test-deps: WARNING: apt-get install ${need_apt[*]} failed (see /tmp/test-deps-apt.log)"
  else
    echo "test-deps: WARNING: ${need_apt[*]} missing and apt-get unavailable (not root?)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || echo "test-deps: WARNING: could not create .venv"
fi
# The version is checked, not only the presence: scripts/moto-server.py wraps moto's own
# request handlers, as this version names them.
if [ -x .venv/bin/pip ] && ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '${MOTO_VERSION}')" 2>/dev/null; then
  echo "test-deps: installing moto[server]==${MOTO_VERSION} into .venv"
  .venv/bin/pip install -q "moto[server]==${MOTO_VERSION}" >/tmp/test-deps-pip.log 2>&1 \
    || echo "test-deps: WARNING: pip install moto failed (see /tmp/test-deps-pip.log)"
fi
if [ -x .venv/bin/pip ] && ! .venv/bin/python -c "import pyspark, sys; sys.exit(pyspark.__version__ != '${PYSPARK_VERSION}')" 2>/dev/null; then
  echo "test-deps: installing pyspark==${PYSPARK_VERSION} into .venv"
  .venv/bin/pip install -q "pyspark==${PYSPARK_VERSION}" >/tmp/test-deps-pyspark.log 2>&1 \
    || echo "test-deps: WARNING: pip install pyspark failed (see /tmp/test-deps-pyspark.log)"
fi
if [ -x .venv/bin/pip ] && [ ! -x .venv/bin/kubernetes-validate ]; then
  echo "test-deps: installing kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} into .venv"
  .venv/bin/pip install -q "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" >/tmp/test-deps-kv.log 2>&1 \
    || echo "test-deps: WARNING: pip install kubernetes-validate failed (see /tmp/test-deps-kv.log)"
fi
command -v java >/dev/null 2>&1 || echo "test-deps: WARNING: java is not installed; the real-Spark tests will be skipped"
exit 0
