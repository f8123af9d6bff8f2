# Shared by scripts/serve, scripts/test and .ci/run: make a fresh Debian machine able to
# run appsnap. Every step is idempotent, so running it on a prepared machine costs seconds.
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "run as root (appsnap reads /var/lib/docker/volumes and controls Docker): sudo $0"
}

# Debian packages: Docker's engine, busybox for the test image, and the tools that the
# tests (GNU tar, getfattr) and the benchmark (pigz, zstd) compare against.
ensure_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    command -v pigz >/dev/null || missing+=(pigz)
    command -v zstd >/dev/null || missing+=(zstd)
    command -v getfattr >/dev/null || missing+=(attr)
    # The churn app of the pre-copy tests is C, linked static to run in the busybox image.
    dpkg -s libc6-dev >/dev/null 2>&1 || missing+=(libc6-dev)
    command -v cc >/dev/null || missing+=(gcc)
    # An ext4 with bigalloc clusters, loop-mounted, where the in-place assembly falls back.
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    # restic reads appsnap's offsite repositories in the interop test (and is the
    # users' way out without appsnap).
    command -v restic >/dev/null || missing+=(restic)
    # Prometheus and promtool for the metrics test, a real SMTP server for the mail test
    # (without what they recommend).
    local bare=()
    command -v prometheus >/dev/null || bare+=(prometheus)
    command -v aiosmtpd >/dev/null || bare+=(python3-aiosmtpd)
    dpkg -s python3-venv >/dev/null 2>&1 || bare+=(python3-venv)
    # The console's browser tests: Debian's Chromium (Playwright downloads no browser),
    # driven from Node (which the machine usually has).
    [ -x /usr/bin/chromium ] || bare+=(chromium)
    # A CJK font, so that the Chinese screens' screenshots show glyphs, not boxes.
    dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || bare+=(fonts-wqy-microhei)
    command -v npm >/dev/null || bare+=(nodejs npm)
    if [ ${#missing[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
        echo "installing: ${missing[*]} ${bare[*]}"
        apt-get update -qq
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ ${#bare[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${bare[@]}" >/dev/null
    fi
}

# Start dockerd unless one answers already, and wait (bounded) until it does.
ensure_dockerd() {
    if docker info >/dev/null 2>&1; then return 0; fi
    echo "starting dockerd (log: /var/log/appsnap-dockerd.log)"
    nohup dockerd >/var/log/appsnap-dockerd.log 2>&1 &
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    tail -n 30 /var/log/appsnap-dockerd.log >&2 || true
    die "dockerd did not start within 60 s (see /var/log/appsnap-dockerd.log); install Debian's docker.io"
}

# No image registry is reachable here, so the test image is imported from busybox-static.
ensure_test_image() {
    docker image inspect appsnap-test/busybox:1 >/dev/null 2>&1 && return 0
    local root
    root=$(mktemp -d)
    mkdir -p "$root/bin"
    cp /bin/busybox "$root/bin/"
    ln -s busybox "$root/bin/sh"
    tar -C "$root" -c . | docker import - appsnap-test/busybox:1 >/dev/null
    rm -rf "$root"
}

ensure_rust() {
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
    # Policies build for wasm32-wasip2 (rust-toolchain.toml lists it, but rustup adds
    # listed targets only when it installs the toolchain itself).
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
        rustup target add wasm32-wasip2
    fi
}

# Schemathesis (PyPI), for the API contract test: in its own venv, pinned.
SCHEMATHESIS=/opt/appsnap-schemathesis
ensure_schemathesis() {
    if [ -x "$SCHEMATHESIS/bin/st" ]; then return 0; fi
    echo "installing schemathesis into $SCHEMATHESIS"
    /usr/bin/python3 -m venv "$SCHEMATHESIS"
    "$SCHEMATHESIS/bin/pip" install -q "schemathesis==4.32.5" \
        || die "cannot install schemathesis from PyPI"
}

# s3s-fs (crates.io), a real S3 server for the offsite tests: built once (~4 min) into
# ~/.cargo/bin. 0.14.1 is the newest that builds with the pinned rustc.
ensure_s3s_fs() {
    if [ -x "$HOME/.cargo/bin/s3s-fs" ]; then return 0; fi
    echo "installing s3s-fs 0.14.1 (a local S3 server for the tests; a few minutes, once)"
    cargo install s3s-fs@0.14.1 --features binary --locked -q \
        || die "cannot install s3s-fs from crates.io"
}

# rustic_server (crates.io), a real restic REST server for the `rest:` repository tests:
# built once (~10 min) into ~/.cargo/bin. 0.4.4 builds with the pinned rustc.
ensure_rustic_server() {
    if [ -x "$HOME/.cargo/bin/rustic-server" ]; then return 0; fi
    echo "installing rustic_server 0.4.4 (a local REST server for the tests; ~10 minutes, once)"
    cargo install rustic_server@0.4.4 --locked -q \
        || die "cannot install rustic_server from crates.io"
}

# The Node packages that drive Chromium in the console's browser tests (playwright-core,
# @axe-core/playwright), as tests/browser/package-lock.json pins them.
ensure_browser() {
    local dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
    if [ ! -d "$dir/node_modules/playwright-core" ]; then
        echo "installing the browser tests' packages (npm ci in tests/browser)"
        npm ci --prefix "$dir" --no-audit --no-fund -q >/dev/null \
            || die "cannot install the browser tests' packages from npm"
    fi
}
