#!/usr/bin/env bash
# install-julia: install Julia 1.5.3 from Debian bullseye into a private,
# relocatable prefix (default /var/cache/casstore/julia-1.5.3).
#
# Why this shape: bookworm ships no Julia, so we fetch bullseye's .debs with
# a private apt state (own sources list, lists and cache dirs), unpack them
# with `dpkg -x` and flatten `usr/` into the prefix.  The prefix must run when
# copied elsewhere (into a depot at /depot/julia), so:
#   * every shared library the tree needs beyond glibc/libstdc++/libgcc_s is
#     copied into lib/x86_64-linux-gnu (this also fixes the dangling relative
#     symlinks in lib/x86_64-linux-gnu/julia/);
#   * every library without a RUNPATH gets an $ORIGIN-relative one (patchelf);
#     the julia binary and libjulia already carry $ORIGIN runpaths, and Julia
#     finds its sysimage and stdlib relative to the binary.
# No LD_LIBRARY_PATH is needed.  The stock sys.so is left byte-identical.
#
# Usage: tools/install-julia [--prefix DIR] [--force]
# Env:   CAS_JULIA_PREFIX, CAS_DEBIAN_MIRROR, CAS_JULIA_APT_DIR
# Prints the prefix as the last line of stdout; progress goes to stderr.
set -euo pipefail

JULIA_VERSION=1.5.3
PREFIX="${CAS_JULIA_PREFIX:-/var/cache/casstore/julia-${JULIA_VERSION}}"
MIRROR="${CAS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
FORCE=0
STAMP=.casstore-julia-complete
TRIPLET=x86_64-linux-gnu

# Packages that only bullseye has (sonames bookworm lacks); libunwind8 pinned:
# bookworm's 1.6.2 unwinder segfaults as soon as Julia throws.
BULLSEYE_PKGS=(julia julia-common libjulia1 libllvm9 libgit2-1.1 libmbedtls12
    libmbedcrypto3 libmbedx509-0 libdsfmt-19937-1 libopenlibm3 libutf8proc2
    libffi7 libunwind8=1.3.2-2 libhttp-parser2.9)
# Bookworm packages whose libraries get copied into the prefix.
HOST_PKGS=(patchelf libgfortran5 libpcre3 libcurl3-gnutls libgmp10 libmpfr6
    libpcre2-8-0 libssh2-1 libz3-4 libedit2 liblzma5 zlib1g libtinfo6)
# Sonames every glibc system has; never copied.
BASE_SONAMES=" libc.so.6 libm.so.6 libdl.so.2 librt.so.1 libpthread.so.0 "
BASE_SONAMES+="ld-linux-x86-64.so.2 libgcc_s.so.1 libstdc++.so.6 libresolv.so.2 "
BASE_SONAMES+="libutil.so.1 "

log() { echo "install-julia: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
case "$PREFIX" in /*) ;; *) PREFIX="$PWD/$PREFIX" ;; esac
PREFIX="${PREFIX%/}"
APTDIR="${CAS_JULIA_APT_DIR:-$(dirname "$PREFIX")/apt-bullseye}"

# verify DIR: run the installed julia with a throwaway depot and no
# LD_LIBRARY_PATH; checks relocation-relevant paths and LibGit2 loading.
verify() {
    local dir="$1" depot out
    depot="$(mktemp -d)"
    out="$(env -u LD_LIBRARY_PATH JULIA_DEPOT_PATH="$depot" \
        "$dir/bin/julia" --startup-file=no --history-file=no -e '
        using LinearAlgebra, LibGit2
        @assert VERSION == v"'"$JULIA_VERSION"'"
        @assert realpath(Sys.BINDIR) == realpath(joinpath(ARGS[1], "bin"))
        @assert startswith(realpath(unsafe_string(Base.JLOptions().image_file)),
                           realpath(ARGS[1]))
        @assert isdir(Sys.STDLIB)
        @assert det([2.0 1.0; 1.0 2.0]) ≈ 3.0
        try; error("unwind check"); catch; end
        println("OK ", LibGit2.version())' "$dir" 2>&1)" || {
        rm -rf "$depot"; log "$out"; return 1; }
    rm -rf "$depot"
    log "verified $dir: $out"
}

if [ "$FORCE" = 0 ] && [ -f "$PREFIX/$STAMP" ]; then
    verify "$PREFIX" || die "prefix $PREFIX is marked complete but fails; rerun with --force"
    echo "$PREFIX"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (apt-get install of host libraries)"
t0=$(date +%s)

host_pkgs_ok() {
    local p
    for p in "${HOST_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || return 1
    done
}
if ! host_pkgs_ok; then
    log "apt-get install ${HOST_PKGS[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${HOST_PKGS[@]}" >&2 || {
        apt-get update >&2
        apt-get install -y --no-install-recommends "${HOST_PKGS[@]}" >&2
    }
fi

# Private apt state for bullseye: touches nothing in /etc/apt or /var/lib/apt.
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bullseye main" \
    > "$APTDIR/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$APTDIR/sources.list"
    -o "Dir::Etc::SourceParts=$APTDIR/no-parts"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "APT::Sandbox::User=root")
mkdir -p "$APTDIR/no-parts"

fetch_debs() {
    (cd "$APTDIR/debs" && apt-get "${APT_OPTS[@]}" -q download "${BULLSEYE_PKGS[@]}" >&2)
}
if [ ! -f "$APTDIR/debs/.complete" ]; then
    rm -f "$APTDIR/debs/"*.deb
    if ! fetch_debs; then
        log "apt-get update (bullseye, private lists)"
        apt-get "${APT_OPTS[@]}" -q update >&2
        fetch_debs
    fi
    touch "$APTDIR/debs/.complete"
fi
ls "$APTDIR/debs/"libunwind8_1.3.2-2_*.deb >/dev/null || die "libunwind8 1.3.2-2 missing"

STAGE="$PREFIX.partial.$$"
trap 'rm -rf "$STAGE" "$STAGE.x"' EXIT
rm -rf "$STAGE" "$STAGE.x"
mkdir -p "$STAGE.x"
log "unpacking $(ls "$APTDIR/debs/"*.deb | wc -l) packages"
for deb in "$APTDIR/debs/"*.deb; do dpkg -x "$deb" "$STAGE.x"; done
# Flatten usr/ into the prefix root: bin/julia, lib/<triplet>/, share/julia.
mv "$STAGE.x/usr" "$STAGE"
mv "$STAGE.x/etc" "$STAGE/etc"
rm -rf "$STAGE.x" "$STAGE/share/doc" "$STAGE/share/man" "$STAGE/share/lintian" \
    "$STAGE/share/applications" "$STAGE/share/metainfo"
LIB="$STAGE/lib/$TRIPLET"

elf_files() {
    find "$LIB" -type f -name '*.so*' ! -name sys.so -exec sh -c \
        'head -c4 "$1" | grep -q ELF && echo "$1"' _ {} \;
    echo "$STAGE/bin/julia"
}
have_soname() { [ -e "$LIB/$1" ] || [ -e "$LIB/julia/$1" ]; }
LDCACHE="$(ldconfig -p)"
host_path() { awk -v s="$1" '$1 == s && /x86-64/ {print $NF; exit}' <<<"$LDCACHE"; }

# Dangling relative links in julia/ point at sonames in ../; copy them too.
for l in $(find "$LIB/julia" -xtype l); do
    so="$(basename "$(readlink "$l")")"
    have_soname "$so" && continue
    src="$(host_path "$so")"
    [ -n "$src" ] || die "host library $so (link $l) not found"
    cp -L "$src" "$LIB/$so"; chmod 644 "$LIB/$so"
    log "copied host $so (for $(basename "$l"))"
done
# Copy the closure of needed sonames that the prefix lacks.
changed=1
while [ "$changed" = 1 ]; do
    changed=0
    for f in $(elf_files); do
        for so in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            case "$BASE_SONAMES" in *" $so "*) continue ;; esac
            have_soname "$so" && continue
            src="$(host_path "$so")"
            [ -n "$src" ] || die "host library $so (needed by $f) not found"
            cp -L "$src" "$LIB/$so"
            chmod 644 "$LIB/$so"
            log "copied host $so"
            changed=1
        done
    done
done
dangling="$(find "$STAGE" -xtype l)"
[ -z "$dangling" ] || die "dangling symlinks remain: $dangling"

# $ORIGIN runpaths on every library (libLLVM's Debian runpath, $ORIGIN/../lib,
# does not reach libffi.so.7); julia and libjulia keep their own.  Libraries
# are also loaded through the relative links in julia/ (julia/libgit2.so), and
# glibc expands $ORIGIN to the link's folder, so list both folders.
for f in $(elf_files); do
    case "$f" in "$STAGE/bin/julia"|"$LIB"/libjulia.so*) continue ;; esac
    patchelf --set-rpath '$ORIGIN:$ORIGIN/..:$ORIGIN/julia' "$f"
done
missing="$(for f in $(elf_files); do env -u LD_LIBRARY_PATH ldd "$f" | grep 'not found' || true; done)"
[ -z "$missing" ] || die "unresolved libraries: $missing"

verify "$STAGE" || die "verification of the new prefix failed"
# Relocation check: a copy elsewhere must run as well.
RELOC="$(mktemp -d)"
cp -a "$STAGE" "$RELOC/julia"
verify "$RELOC/julia" || { rm -rf "$RELOC"; die "relocated copy fails"; }
rm -rf "$RELOC"

echo "julia $JULIA_VERSION from Debian bullseye; installed by tools/install-julia" \
    > "$STAGE/$STAMP"
rm -rf "$PREFIX"
mkdir -p "$(dirname "$PREFIX")"
mv "$STAGE" "$PREFIX"
verify "$PREFIX"
log "done in $(( $(date +%s) - t0 )) s: $(du -sh "$PREFIX" | cut -f1)"
echo "$PREFIX"
