#!/usr/bin/env bash
# The whole test suite, from a fresh machine: host set-up (packages,
# Firecracker, guest kernel + rootfs; cached after the first run), lints,
# then every unit and end-to-end test. Run as root: the end-to-end tests
# make network namespaces and boot guests in them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
	echo "scripts/test.sh: run as root (sudo bash scripts/test.sh)" >&2
	exit 2
fi
if ! command -v cargo >/dev/null; then
	echo "scripts/test.sh: cargo not found; install a Rust toolchain >= 1.95 (rustup)" >&2
	exit 2
fi

bash scripts/setup.sh
# The guest agent, a static binary, into the guest assets.
bash scripts/build-agent.sh

# etcd for tests/cluster.rs (a 3-member etcd in network namespaces): Debian's
# etcd-server and etcd-client (3.4). The package's own service is not wanted
# on a test machine: the tests run their members themselves.
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
	echo "== test tools: etcd-server, etcd-client (apt)" >&2
	ensure_packages etcd-server etcd-client
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
		systemctl disable --now etcd >/dev/null 2>&1 || true
	fi
fi

# Test tools from PyPI, pinned, in their own venv (not the system's Python).
TOOLS=/var/lib/fcm-test-tools
SCHEMATHESIS_VERSION=4.32.5
if ! "$TOOLS/venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
	echo "== test tools: schemathesis $SCHEMATHESIS_VERSION into $TOOLS/venv" >&2
	python3 -m venv "$TOOLS/venv"
	"$TOOLS/venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
# The E2B Python SDK, pinned, for tests/e2b.rs (its own venv: its
# dependencies are not schemathesis's).
E2B_SDK_VERSION=2.63.0
if ! "$TOOLS/e2b-venv/bin/python" -c "import importlib.metadata as m; assert m.version('e2b') == '$E2B_SDK_VERSION'" 2>/dev/null; then
	echo "== test tools: e2b $E2B_SDK_VERSION into $TOOLS/e2b-venv" >&2
	python3 -m venv "$TOOLS/e2b-venv"
	"$TOOLS/e2b-venv/bin/pip" install --quiet "e2b==$E2B_SDK_VERSION"
fi
# And one from before the v2 paths (2.51), for the v1 ones.
E2B_OLD_SDK_VERSION=2.50.0
if ! "$TOOLS/e2b-old-venv/bin/python" -c "import importlib.metadata as m; assert m.version('e2b') == '$E2B_OLD_SDK_VERSION'" 2>/dev/null; then
	echo "== test tools: e2b $E2B_OLD_SDK_VERSION into $TOOLS/e2b-old-venv" >&2
	python3 -m venv "$TOOLS/e2b-old-venv"
	"$TOOLS/e2b-old-venv/bin/pip" install --quiet "e2b==$E2B_OLD_SDK_VERSION"
fi
# The Prometheus text-format parser, pinned, for tests/metrics.rs.
PROMETHEUS_CLIENT_VERSION=0.26.0
if ! "$TOOLS/prom-venv/bin/python" -c "import importlib.metadata as m; assert m.version('prometheus-client') == '$PROMETHEUS_CLIENT_VERSION'" 2>/dev/null; then
	echo "== test tools: prometheus-client $PROMETHEUS_CLIENT_VERSION into $TOOLS/prom-venv" >&2
	python3 -m venv "$TOOLS/prom-venv"
	"$TOOLS/prom-venv/bin/pip" install --quiet "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi
# The E2B JS SDK, pinned, for tests/e2b.rs (it needs Node >= 20.18; the
# machines this runs on have Node 20).
E2B_JS_SDK_VERSION=2.51.0
if ! grep -qF "\"version\": \"$E2B_JS_SDK_VERSION\"" "$TOOLS/e2b-js/node_modules/e2b/package.json" 2>/dev/null; then
	echo "== test tools: npm e2b $E2B_JS_SDK_VERSION into $TOOLS/e2b-js" >&2
	mkdir -p "$TOOLS/e2b-js"
	[ -f "$TOOLS/e2b-js/package.json" ] || echo '{"name": "fcm-test-tools-e2b-js", "private": true}' >"$TOOLS/e2b-js/package.json"
	(cd "$TOOLS/e2b-js" && npm install --no-audit --no-fund --silent "e2b@$E2B_JS_SDK_VERSION")
fi

# The web console's browser tests (tests/ui.rs): Debian's Chromium and
# playwright-core, pinned, driving it (Playwright cannot fetch a browser here).
if ! command -v chromium >/dev/null; then
	echo "== test tools: chromium (Debian)" >&2
	# With its recommended packages (fonts among them), as a user would.
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2
fi
PLAYWRIGHT_VERSION=1.65.0
if ! grep -qF "\"version\": \"$PLAYWRIGHT_VERSION\"" "$TOOLS/ui-js/node_modules/playwright-core/package.json" 2>/dev/null; then
	echo "== test tools: npm playwright-core $PLAYWRIGHT_VERSION into $TOOLS/ui-js" >&2
	mkdir -p "$TOOLS/ui-js"
	[ -f "$TOOLS/ui-js/package.json" ] || echo '{"name": "fcm-test-tools-ui-js", "private": true}' >"$TOOLS/ui-js/package.json"
	(cd "$TOOLS/ui-js" && npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION")
fi

echo "== lints" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests" >&2
# Two test threads: each end-to-end test boots QEMU/TCG guests, and the
# machines this runs on have two cores.
cargo test --workspace --locked -- --test-threads=2
