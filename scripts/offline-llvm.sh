#!/usr/bin/env bash
# offline-llvm.sh — make `cargo build --features cuda` work without internet.
#
# Why this exists:
#   burn/cuda -> burn-cuda -> cubecl-cuda -> cubecl-llvm. cubecl-llvm's build
#   script depends on the crate `tracel-llvm-bundler` (23.1.0-4), whose own
#   build script downloads a prebuilt LLVM 23.1 tarball from GitHub releases
#   into ${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4/.
#   Our machines (developers and CI) reach only crates.io, PyPI, npm and
#   Debian apt, so that download fails and the whole cuda build fails.
#
#   The bundler skips the download when the folder already holds the sentinel
#   file `.tracel-llvm-installed`. After that, cubecl-llvm only needs
#   `<folder>/bin/llvm-config` (called with `--link-static --libs`,
#   `--system-libs`, `--libdir`, `--includedir`, `--cxxflags`). So we:
#     1. install Debian's LLVM 22 (bookworm-security ships llvm-22-dev) plus
#        the static libs `llvm-config --link-static` insists on (Polly) and
#        the system libs it asks to link (zstd, z3);
#     2. create the folder with the sentinel and a `bin/llvm-config` wrapper
#        that forwards to /usr/lib/llvm-22/bin/llvm-config.
#   The wrapper also rewrites absolute shared-library paths in the output
#   (Debian's llvm-config prints `/usr/lib/x86_64-linux-gnu/libz3.so` in
#   --system-libs) to `-lNAME`, because the bundler turns a path into its file
#   stem (`libz3`), which would make rustc look for `liblibz3`.
#
#   LLVM 22 vs the expected 23.1: cubecl-llvm only uses the stable LLVM-C API
#   (via llvm-sys with `no-llvm-linking`) plus small C++ shims; they build and
#   link against 22. Bump LLVM_MAJOR if Debian ships a newer one.
#
# Idempotent: safe to re-run; it only does what is missing and prints what it
# did. If the folder holds a real (downloaded) bundle, it is left alone.
#
# Usage: scripts/offline-llvm.sh        (as root, or with sudo available)
# Env:   LLVM_MAJOR (default 22), TRACEL_LLVM_FULL_VERSION (default 23.1.0-4,
#        must match the tracel-llvm-bundler version in Cargo.lock).
set -euo pipefail

LLVM_MAJOR="${LLVM_MAJOR:-22}"
TRACEL_LLVM_FULL_VERSION="${TRACEL_LLVM_FULL_VERSION:-23.1.0-4}"
LLVM_PREFIX="/usr/lib/llvm-${LLVM_MAJOR}"
PACKAGES=("llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" libzstd-dev libz3-dev)

log() { printf '[offline-llvm] %s\n' "$*"; }

# Warn if Cargo.lock pins a different bundler version than we prepare for.
lock="$(dirname "${BASH_SOURCE[0]}")/../Cargo.lock"
if [[ -f "$lock" ]]; then
    locked="$(awk '/^name = "tracel-llvm-bundler"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$lock")"
    if [[ -n "$locked" && "$locked" != "$TRACEL_LLVM_FULL_VERSION" ]]; then
        log "WARNING: Cargo.lock has tracel-llvm-bundler $locked, preparing $TRACEL_LLVM_FULL_VERSION;"
        log "         re-run with TRACEL_LLVM_FULL_VERSION=$locked (check its src/config.rs)."
    fi
fi

# --- 1. Debian packages ------------------------------------------------------
SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
        log "not root and no sudo: cannot install packages"; fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} == 0)); then
    log "packages already installed: ${PACKAGES[*]}"
else
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Only refresh the package lists when needed: when a package has no
    # install candidate, or when installing from the current lists fails
    # (stale lists point at superseded .debs).
    need_update=0
    for p in "${missing[@]}"; do
        cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
        if [[ -z "$cand" || "$cand" == "(none)" ]]; then need_update=1; fi
    done
    if ((need_update)); then
        log "running apt-get update (no candidate for some packages)"
        "${SUDO[@]}" apt-get update -q
    fi
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        log "install failed; running apt-get update and retrying"
        "${SUDO[@]}" apt-get update -q
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    log "installed: ${missing[*]}"
fi

if [[ ! -x "$LLVM_PREFIX/bin/llvm-config" ]]; then
    log "ERROR: $LLVM_PREFIX/bin/llvm-config not found after install" >&2
    exit 1
fi

# --- 2. Bundler cache folder -------------------------------------------------
# Same rule as the `dirs` crate's data_local_dir() on Linux.
if [[ -n "${XDG_DATA_HOME:-}" && "${XDG_DATA_HOME}" == /* ]]; then
    data_dir="$XDG_DATA_HOME"
else
    data_dir="$HOME/.local/share"
fi
dest="$data_dir/tracel/tracel-llvm-$TRACEL_LLVM_FULL_VERSION"
wrapper="$dest/bin/llvm-config"
sentinel="$dest/.tracel-llvm-installed"
MARK="# offline-llvm.sh wrapper"

if [[ -e "$wrapper" ]] && ! grep -qF "$MARK" "$wrapper" 2>/dev/null; then
    log "$dest holds a real LLVM bundle (not our wrapper); leaving it alone"
    exit 0
fi

mkdir -p "$dest/bin"

new_wrapper="$(cat <<EOF
#!/bin/sh
$MARK: forwards to Debian's LLVM ${LLVM_MAJOR} for tracel-llvm-bundler.
# Rewrites absolute shared-library paths (e.g. /usr/lib/x86_64-linux-gnu/libz3.so)
# to -lNAME, since the bundler would otherwise link "liblibz3".
set -e
out=\$("$LLVM_PREFIX/bin/llvm-config" "\$@")
printf '%s\n' "\$out" | sed -E 's#(^|[[:space:]])/[^[:space:]]*/lib([^[:space:]/]+)\\.so(\\.[0-9]+)*#\\1-l\\2#g'
EOF
)"

if [[ -f "$wrapper" ]] && [[ "$(cat "$wrapper")" == "$new_wrapper" ]]; then
    log "wrapper up to date: $wrapper"
else
    printf '%s\n' "$new_wrapper" > "$wrapper"
    log "wrote wrapper: $wrapper -> $LLVM_PREFIX/bin/llvm-config"
fi
chmod 755 "$wrapper"

if [[ -f "$sentinel" ]]; then
    log "sentinel present: $sentinel"
else
    : > "$sentinel"
    log "created sentinel: $sentinel"
fi

# Sanity check: the calls the bundler makes must succeed.
"$wrapper" --link-static --libs >/dev/null
log "llvm-config --version: $("$wrapper" --version)"
log "system libs: $("$wrapper" --link-static --system-libs)"
log "done: cargo build --features cuda can now run offline"
