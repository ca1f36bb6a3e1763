#!/usr/bin/env bash
# Fetch the real programs the tests and benchmarks drive (Prometheus, Alertmanager, PgBouncer,
# the Go exporter, PostgreSQL 15) from the Debian or Ubuntu archive this machine's apt uses,
# and unpack them into a folder of the checkout. Nothing is installed system-wide.
#
#   .ci/install-tools.sh [--dest DIR] PACKAGE...
#
#   DIR/root/               the packages, and the shared libraries they need that this machine
#                           lacks, unpacked with dpkg-deb -x (their /usr is DIR/root/usr)
#   DIR/bin/                a launcher for each program in the packages' bin and sbin
#                           directories, with the unpacked libraries on LD_LIBRARY_PATH
#   DIR/installed/PACKAGE   the version unpacked; DIR/installed/PACKAGE.files its file list
#
# DIR defaults to .cache/tools; the Makefile puts .cache/tools/bin first on PATH and
# tests/conftest.py does the same for a bare pytest.
#
# Needs apt-get and dpkg-deb. Root is not needed: `apt-get download` works as any user once
# the package lists exist (as root, missing or stale lists are fetched with apt-get update).
# Whatever it cannot do, it says in one line naming the command to run, and exits 1.
#
# Idempotent: a package already unpacked is not fetched again, so when all are present this
# exits at once without touching apt or the network.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.cache/tools
if [[ ${1:-} == --dest ]]; then
  DEST=${2:?--dest needs a directory}
  shift 2
fi
PACKAGES=("$@")

log() { printf 'install-tools: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

((${#PACKAGES[@]} > 0)) || die "usage: .ci/install-tools.sh [--dest DIR] PACKAGE..."

missing_packages() {
  local package
  for package in "${PACKAGES[@]}"; do
    [[ -f "$DEST/installed/$package" ]] || printf '%s\n' "$package"
  done
}

MISSING=()
mapfile -t MISSING < <(missing_packages)
((${#MISSING[@]} > 0)) || exit 0

{ command -v apt-get && command -v dpkg-deb; } >/dev/null ||
  die "needs apt-get and dpkg-deb (Debian or Ubuntu) to fetch ${MISSING[*]}; elsewhere, install them yourself and put their programs first on PATH"

mkdir -p "$DEST/installed" "$DEST/bin" "$DEST/root"
# One installer at a time per folder (make runs sharing a checkout); then look again.
exec 9>"$DEST/.lock"
flock 9
mapfile -t MISSING < <(missing_packages)
((${#MISSING[@]} > 0)) || exit 0

AS_ROOT=false
[[ $(id -u) -eq 0 ]] && AS_ROOT=true
APT_OPTIONS=(-o Debug::NoLocking=1)
# As root apt downloads as user _apt, which may not enter a checkout under a 0700 home.
$AS_ROOT && APT_OPTIONS+=(-o APT::Sandbox::User=root)

candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }'; }

without_candidate() {
  local package version
  for package in "${MISSING[@]}"; do
    version=$(candidate "$package")
    [[ -n $version && $version != "(none)" ]] || printf '%s\n' "$package"
  done
}

apt_update() {
  log "$1; running apt-get update"
  local output
  # apt-get update exits 0 when it could not fetch a source (it says so in a warning).
  if ! output=$(apt-get update -qq 2>&1) || [[ $output == *"Failed to fetch"* ]]; then
    printf '%s\n' "$output" >&2
    die "apt-get update could not fetch the package lists (above): check the network and /etc/apt/sources.list, then run make again"
  fi
}

lacking=$(without_candidate | xargs)
if [[ -n $lacking ]]; then
  $AS_ROOT || die "apt's package lists have no $lacking: run \`sudo apt-get update\`, then make again"
  apt_update "apt's package lists have no $lacking"
  lacking=$(without_candidate | xargs)
  [[ -z $lacking ]] ||
    die "no apt source offers $lacking: add one that does (on Ubuntu: \`sudo add-apt-repository universe && sudo apt-get update\`), then run make again"
fi

# The shared libraries the packages need that this machine lacks: what installing them would
# pull in (apt-get resolves alternatives and versions), keeping library packages only. The C
# library itself always comes from the machine; the ldd check below catches anything else.
library_dependencies() {
  local wanted
  wanted=$(apt-get install --simulate -qq --no-install-recommends "${APT_OPTIONS[@]}" \
    "${MISSING[@]}" 2>/dev/null | awk '$1 == "Inst" { print $2 }' | sed 's/:.*//' |
    grep -vxF -f <(printf '%s\n' "${MISSING[@]}" libc6 libc-bin) || true)
  [[ -n $wanted ]] || return 0
  # shellcheck disable=SC2086 # one package name per word
  apt-cache show --no-all-versions $wanted 2>/dev/null |
    awk '$1 == "Package:" { name = $2 } $1 == "Section:" && $2 ~ /(^|\/)libs$/ { print name }' |
    sort -u
}
LIBRARIES=()
mapfile -t LIBRARIES < <(library_dependencies)

described=()
for package in "${MISSING[@]}"; do
  described+=("$package $(candidate "$package")")
done
what=$(printf '%s, ' "${described[@]}")
what=${what%, }
((${#LIBRARIES[@]} == 0)) ||
  what+=", and the libraries they need in versions this machine lacks (${LIBRARIES[*]})"
log "installing $what from the apt archive into $DEST (nothing system-wide)"

WORK=$(mktemp -d "$DEST/.download-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
download() { (cd "$WORK" && apt-get download -qq "${APT_OPTIONS[@]}" "$@" >&2); }
if ! download "${MISSING[@]}" "${LIBRARIES[@]}"; then
  # Stale package lists name versions the mirror no longer has.
  $AS_ROOT ||
    die "could not download ${MISSING[*]} (see above): run \`sudo apt-get update\`, then make again"
  apt_update "could not download ${MISSING[*]}"
  download "${MISSING[@]}" "${LIBRARIES[@]}" ||
    die "could not download ${MISSING[*]} (see above): check the network, or run \`apt-get download ${MISSING[*]}\` to see why"
fi

root="$DEST/root"
for deb in "$WORK"/*.deb; do
  dpkg-deb -x "$deb" "$root"
done

# The directories of unpacked libraries, for LD_LIBRARY_PATH.
lib_dirs() {
  local dir
  for dir in "$root"/usr/lib/*-linux-gnu* "$root"/lib/*-linux-gnu*; do
    [[ -d $dir ]] && printf '%s\n' "${dir#"$root"/}"
  done
}
LIB_DIRS=()
mapfile -t LIB_DIRS < <(lib_dirs)
library_path() { # $1 = prefix of each directory
  local dir out=""
  for dir in "${LIB_DIRS[@]}"; do out+="${out:+:}$1/$dir"; done
  printf '%s' "$out"
}

# Every program and library the packages ship must find all its libraries.
unresolved=()
for package in "${MISSING[@]}"; do
  deb=$(printf '%s\n' "$WORK/${package}"_*.deb | head -n 1)
  dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's|^\./||; /\/$/d' >"$DEST/installed/$package.files"
  # ELF files live in bin, sbin and lib directories; share/ and doc/ hold thousands of others.
  while read -r path; do
    file="$root/$path"
    [[ -f $file && ! -L $file && $(head -c 4 "$file" | od -An -c | tr -d ' ') == 177ELF ]] || continue
    while read -r library; do
      unresolved+=("$library (needed by $path)")
    done < <(LD_LIBRARY_PATH="$(library_path "$root")" ldd "$file" 2>&1 |
      awk '/not found/ { print $1 }')
  done < <(grep -E '(^|/)(s?bin|lib[^/]*)/' "$DEST/installed/$package.files")
done
((${#unresolved[@]} == 0)) ||
  die "unpacked ${MISSING[*]}, but found no ${unresolved[*]}: install the package that has it (apt-file search NAME finds it), then run make again"

# Data a package's programs read from a path compiled into them: Debian's alertmanager and
# amtool load their default templates from /usr/share/prometheus/alertmanager. Where the
# machine lacks that path, their launchers run them in a mount namespace of their own (and a
# user namespace, unless root) in which the unpacked usr/share is overlaid on /usr/share;
# nothing changes outside it.
compiled_in_data() {
  case $1 in
    prometheus-alertmanager) echo /usr/share/prometheus/alertmanager/default.tmpl ;;
  esac
}
USERNS=--map-root-user
$AS_ROOT && USERNS=
# shellcheck disable=SC2016 # expanded by the inner shell
OVERLAY='mount -t overlay overlay -o "lowerdir=$1/usr/share:/usr/share" /usr/share && shift && exec "$@"'
for package in "${MISSING[@]}"; do
  data=$(compiled_in_data "$package")
  [[ -n $data && ! -e $data ]] || continue
  # shellcheck disable=SC2086 # USERNS is one option or none
  unshare --mount $USERNS sh -c "$OVERLAY" sh "$root" test -e "$data" 2>/dev/null ||
    die "$package reads $data, which this machine lacks, and a private mount namespace to lay it there is not allowed here: run \`sudo apt-get install --no-install-recommends $package\`, then make again"
done

for package in "${MISSING[@]}"; do
  dpkg-deb --field "$(printf '%s\n' "$WORK/${package}"_*.deb | head -n 1)" Version \
    >"$DEST/installed/$package"
done

# A launcher per program of every package in DEST (the library directories may have grown).
for list in "$DEST"/installed/*.files; do
  package=$(basename "$list" .files)
  [[ -f "$DEST/installed/$package" ]] || continue
  while read -r path; do
    [[ -x "$root/$path" ]] || continue
    launcher="$DEST/bin/$(basename "$path")"
    {
      printf '#!/bin/sh\n'
      printf '# %s %s from the apt archive, unpacked by .ci/install-tools.sh\n' \
        "$package" "$(cat "$DEST/installed/$package")"
      # shellcheck disable=SC2016 # expanded when the launcher runs
      printf 'root=$(dirname "$(readlink -f "$0")")/../root\n'
      if ((${#LIB_DIRS[@]} > 0)); then
        # shellcheck disable=SC2016
        printf 'LD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\nexport LD_LIBRARY_PATH\n' \
          "$(library_path '$root')"
      fi
      data=$(compiled_in_data "$package")
      if [[ -n $data ]]; then
        printf '# It reads %s: where it is missing, from the unpacked usr/share.\n' "$data"
        printf 'if [ ! -e %s ]; then\n' "$data"
        # shellcheck disable=SC2016
        printf '  userns=--map-root-user; [ "$(id -u)" = 0 ] && userns=\n'
        # shellcheck disable=SC2016
        printf '  exec unshare --mount $userns sh -c %s sh "$root" "$root/%s" "$@"\nfi\n' \
          "'$OVERLAY'" "$path"
      fi
      # shellcheck disable=SC2016
      printf 'exec "$root/%s" "$@"\n' "$path"
    } >"$launcher.tmp"
    chmod 755 "$launcher.tmp"
    mv "$launcher.tmp" "$launcher"
  done < <(grep -E '^(usr/)?s?bin/[^/]+$' "$list" || true)
done
