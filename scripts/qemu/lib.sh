# Functions for scripts/qemu-check.sh and scripts/qemu/bench.sh (sourced; needs ROOT, CACHE,
# JOBS, OUT set).

QEMU_DEB_PKGS="ninja-build meson pkg-config libglib2.0-dev libpixman-1-dev libfdt-dev flex bison
  zlib1g-dev libslirp-dev libgnutls28-dev gnutls-bin seabios ipxe-qemu dpkg-dev python3 gcc make
  cmake ccache binutils"
# Debian's own QEMU 7.2 (bookworm), the other side of the interop test, at the 7.2 version
# (not a backport); apt brings its qemu-system-common and qemu-system-data to match.
QEMU_DEB_BINARY_PKGS="qemu-system-x86"

# Installs what is missing; Debian's qemu-system-x86 at bookworm's 7.2 version.
qemu_install_deps() {
  export DEBIAN_FRONTEND=noninteractive
  local missing=() p
  for p in $QEMU_DEB_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  local want
  want=$(qemu_debian_72_version)
  if [ -z "$want" ]; then
    apt-get update -qq
    want=$(qemu_debian_72_version)
  fi
  [ -n "$want" ] || { echo "no qemu-system-x86 7.2 in apt's lists" >&2; return 1; }
  for p in $QEMU_DEB_BINARY_PKGS; do
    [ "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null)" = "$want" ] || missing+=("$p=$want")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
  fi
  /usr/bin/qemu-system-x86_64 --version | head -1
}

# The newest 7.2 version of qemu-system-x86 that apt knows (bookworm or its security suite).
qemu_debian_72_version() {
  apt-cache madison qemu-system-x86 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' |
    grep -E '^1:7\.2\+' | sort -V | tail -1
}

# Debian bookworm's qemu source package, unpacked under $CACHE/src. deb-src is enabled for
# this command only, through private sources/lists/cache directories derived from the
# machine's own deb sources; /etc/apt is not modified. Prints the source directory.
qemu_fetch_source() {
  local dir=$CACHE/src
  local found
  found=$(ls -d "$dir"/qemu-7.2* 2>/dev/null | head -1 || true)
  if [ -n "$found" ] && [ -f "$found/.pcr-unpacked" ]; then
    echo "$found"
    return 0
  fi
  local apt=$CACHE/apt
  rm -rf "$apt" "$dir"
  mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" "$dir"
  # The machine's deb sources, as deb-src (deb822 and one-line formats).
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$apt/sources.list.d/$(basename "$f")"
  done
  : >"$apt/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -nE 's/^deb (.*)$/deb-src \1/p' "$f" >>"$apt/sources.list"
  done
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/sources.list.d"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Get::List-Cleanup=0")
  apt-get "${opts[@]}" update -qq >&2
  (cd "$dir" && apt-get "${opts[@]}" source -qq 'qemu/bookworm' >&2 2>&1 ||
    apt-get "${opts[@]}" source -qq qemu >&2)
  found=$(ls -d "$dir"/qemu-7.2* | head -1)
  [ -f "$found/meson.build" ] || { echo "apt-get source qemu gave no 7.2 tree" >&2; return 1; }
  touch "$found/.pcr-unpacked"
  echo "$found"
}

# A private copy of the source for one side ("stock" or "patched"), configured and built
# under $CACHE/<side>/build. A second call rebuilds only what changed (nothing, normally).
qemu_build() {
  local side=$1 src=$2
  local tree=$CACHE/$side/src bld=$CACHE/$side/build
  if [ ! -f "$tree/.pcr-copied" ]; then
    rm -rf "$CACHE/$side"
    mkdir -p "$CACHE/$side"
    cp -a "$src" "$tree"
    # The dfsg tarball has no firmware blobs: do not unpack edk2.
    sed -i -E 's/^(\s*unpack_edk2_blobs = )bzip2\.found\(\)/\1false/' "$tree/meson.build"
    ! grep -q 'unpack_edk2_blobs = bzip2' "$tree/meson.build" ||
      { echo "meson.build: no unpack_edk2_blobs line to patch" >&2; return 1; }
    touch "$tree/.pcr-copied"
  fi
  local pkgpath=""
  if [ "$side" = patched ]; then
    # The shim replaces migration/postcopy-ram.c in place, with the check's test
    # instrumentation on (PCR_QEMU_CHECK, defined in this copy only: the shipped shim and
    # meson.patch never define it); written only when it changed, so ninja sees an
    # unchanged file as unchanged. (PCR_QEMU_SHIM: another file, to try.)
    local shim=${PCR_QEMU_SHIM:-$ROOT/integrations/qemu-7.2/postcopy-ram.c}
    local plumbing=$ROOT/integrations/qemu-7.2/postcopy-ram-plumbing.c
    local inst=$CACHE/patched/postcopy-ram.check.c
    { echo '/* scripts/qemu-check.sh: the shim with its test instrumentation on */'
      echo '#define PCR_QEMU_CHECK 1'
      cat "$shim"; } >"$inst"
    cmp -s "$inst" "$tree/migration/postcopy-ram.c" || cp "$inst" "$tree/migration/postcopy-ram.c"
    cmp -s "$plumbing" "$tree/migration/postcopy-ram-plumbing.c" ||
      cp "$plumbing" "$tree/migration/postcopy-ram-plumbing.c"
    # The meson patch; a changed one replaces the one applied before.
    local mp=$ROOT/integrations/qemu-7.2/meson.patch
    if ! cmp -s "$mp" "$tree/.pcr-meson.patch"; then
      if [ -f "$tree/.pcr-meson.patch" ]; then
        patch -s -R -d "$tree" -p1 <"$tree/.pcr-meson.patch"
      fi
      patch -s -d "$tree" -p1 <"$mp"
      cp "$mp" "$tree/.pcr-meson.patch"
    fi
    pkgpath=$CACHE/pcr-prefix/lib/pkgconfig
  fi
  # ccache shared by both sides: the patched build differs from the stock one by two files
  # and an -I flag, which ccache's preprocessor mode ignores, so it costs little more than
  # the stock build. BASEDIR makes the trees' absolute paths relative (-include osdep.h).
  export CCACHE_DIR=$CACHE/ccache CCACHE_NOHASHDIR=true CCACHE_BASEDIR=$CACHE CCACHE_MAXSIZE=5G
  if [ ! -f "$bld/build.ninja" ]; then
    rm -rf "$bld"
    mkdir -p "$bld"
    (cd "$bld" && PKG_CONFIG_PATH=$pkgpath "$tree/configure" --cc="ccache cc" \
      --target-list=x86_64-softmmu --disable-tcg --enable-kvm --disable-docs --disable-werror \
      --disable-tools --disable-install-blobs --meson=meson --disable-gtk --disable-sdl \
      --disable-vnc --disable-spice --disable-opengl --disable-virglrenderer --disable-curses \
      --disable-libusb --disable-usb-redir --disable-smartcard --disable-xen --disable-brlapi \
      --disable-guest-agent --disable-capstone --disable-vte --disable-cocoa --disable-pa \
      --disable-alsa --disable-jack --disable-oss --disable-libssh --disable-rbd \
      --disable-glusterfs --disable-libiscsi --disable-libnfs --disable-seccomp \
      --disable-linux-io-uring --disable-xkbcommon --disable-gio --enable-gnutls \
      >"$CACHE/$side/configure.log" 2>&1) || { tail -30 "$CACHE/$side/configure.log" >&2; return 1; }
  fi
  local t0=$SECONDS
  (cd "$bld" && PKG_CONFIG_PATH=$pkgpath ninja -j"$JOBS" qemu-system-x86_64 tests/qtest/migration-test \
    >"$CACHE/$side/ninja.log" 2>&1) || { tail -40 "$CACHE/$side/ninja.log" >&2; return 1; }
  echo "$side build: $((SECONDS - t0))s ($(grep -c '^\[' "$CACHE/$side/ninja.log" || true) ninja steps)"
  qemu_link_firmware "$bld"
}

# Firmware from Debian's seabios and ipxe-qemu (and qemu-system-data's option ROMs) where
# the build looks for it.
qemu_link_firmware() {
  local d=$1/qemu-bundle/usr/local/share/qemu f
  mkdir -p "$d"
  for f in /usr/share/seabios/*.bin /usr/lib/ipxe/qemu/*.rom /usr/share/qemu/*.bin /usr/share/qemu/*.rom; do
    [ -e "$f" ] || continue
    [ -e "$d/$(basename "$f")" ] || ln -sf "$f" "$d/$(basename "$f")"
  done
}

# libpostcopy_ram built by CMake (cargo underneath, its own target dir in the cache) and
# installed into $CACHE/pcr-prefix, seed names left out.
pcr_install_library() {
  local b=$CACHE/pcr-build
  # A cache used from another clone: CMake's build tree is tied to its source directory.
  if [ -f "$b/CMakeCache.txt" ] && ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT" "$b/CMakeCache.txt"; then
    rm -rf "$b"
  fi
  CARGO_TARGET_DIR=$CACHE/pcr-target cmake -S "$ROOT" -B "$b" -DCMAKE_BUILD_TYPE=Release \
    -DPOSTCOPY_RAM_SEED_ABI=OFF -DPOSTCOPY_RAM_CARGO_TARGET_DIR="$CACHE/pcr-target" >"$CACHE/pcr-cmake.log" 2>&1 ||
    { tail -20 "$CACHE/pcr-cmake.log" >&2; return 1; }
  cmake --build "$b" >>"$CACHE/pcr-cmake.log" 2>&1 || { tail -30 "$CACHE/pcr-cmake.log" >&2; return 1; }
  cmake --install "$b" --prefix "$CACHE/pcr-prefix" >>"$CACHE/pcr-cmake.log" 2>&1 ||
    { tail -20 "$CACHE/pcr-cmake.log" >&2; return 1; }
  echo "library: $(PKG_CONFIG_PATH=$CACHE/pcr-prefix/lib/pkgconfig pkg-config --modversion postcopy-ram)"
}

qemu_binary() {
  case $1 in
    debian) echo /usr/bin/qemu-system-x86_64 ;;
    stock) echo "$OUT/qemu-system-x86_64.stock" ;;
    patched) echo "$OUT/qemu-system-x86_64" ;;
  esac
}

# One migration-test case against the build of one side (run from its build directory, so
# the firmware in qemu-bundle is found): its TAP output (stdout) goes to the file $3, all
# the rest to this function's stdout, which must be a pipe (qemu_qtest below): with
# QTEST_LOG=1 (the recovery tests hide QEMU's stderr otherwise, and a failure must show
# QEMU's own words) each QEMU opens its qtest log as /dev/fd/2 with fopen "w+", which
# truncates a log file shared with the test and its other QEMU, and an O_APPEND open does
# not help (the reopen is a new open file description without it); on a pipe the truncate
# does nothing. A test still running after $QTEST_TIMEOUT s (180) is taken as hung: the
# stacks of its QEMU processes go into the log (gdb), then everything is killed; whatever
# the test leaves behind in its process group is killed too (it would hold the pipe open).
qemu_run_qtest() {
  local side=$1 t=$2 tap=$3 limit=${QTEST_TIMEOUT:-180}
  local bld=$CACHE/$side/build
  exec 2>&1
  (cd "$bld" && QTEST_LOG=1 QTEST_QEMU_BINARY=./qemu-system-x86_64 \
    exec setsid -w ./tests/qtest/migration-test -p "/x86_64/migration/$t" --tap -k >"$tap") &
  local pid=$! waited=0 rc
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$limit" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "HUNG: still running after ${limit}s; stacks of its QEMU processes follow"
    local q
    for q in $(pgrep -s "$pid" -f qemu-system-x86_64); do
      echo "=== pid $q: $(tr '\0' ' ' <"/proc/$q/cmdline" | cut -c1-200)"
      command -v gdb >/dev/null && timeout 60 gdb -p "$q" -batch -ex 'thread apply all bt' 2>&1 |
        grep -E '^(Thread|#)' || true
    done
    kill -9 -- -"$pid" 2>/dev/null || true
  fi
  wait "$pid" && rc=0 || rc=$?
  kill -9 -- -"$pid" 2>/dev/null || true
  return "$rc"
}

# Runs one case (qemu_run_qtest) with its log in $3 (through a pipe, so that every QEMU's
# stderr stays in it) and its TAP output in $3.tap, then prints the verdict: "ok" only when
# the TAP output shows the case ran and passed (plan 1..1 and "ok 1 <path>" without a
# SKIP); "skip: <reason>" for a case glib skipped; "fail: <reason>" otherwise (a path that
# matches no registered test prints plan 1..0 and exits 0: a failure here, since the check
# has made sure the tests' precondition, a userfaultfd, holds).
qemu_qtest() {
  local side=$1 t=$2 log=$3 rc path=/x86_64/migration/$2
  local tap=$log.tap
  : >"$tap"
  if qemu_run_qtest "$side" "$t" "$tap" 9>&- | cat >"$log"; then rc=0; else rc=$?; fi
  if grep -q "^ok 1 $path # SKIP" "$tap"; then
    echo "skip: glib skipped it:$(sed -n "s|^ok 1 $path # SKIP||p" "$tap" | head -1)"
  elif [ "$rc" -ne 0 ]; then
    echo "fail: exit status $rc$(grep -q "^not ok" "$tap" && echo ", $(grep -m1 '^not ok' "$tap")")"
  elif ! grep -qx '1\.\.1' "$tap"; then
    echo "fail: TAP plan $(grep -m1 -E '^1\.\.[0-9]+' "$tap" || echo missing), not 1..1 (no test $path ran)"
  elif ! grep -qxF "ok 1 $path" "$tap"; then
    echo "fail: no line 'ok 1 $path' in its TAP output"
  else
    echo ok
  fi
}

# The postcopy qtests that QEMU 7.2's migration-test registers (when it can open a
# userfaultfd), from its source $1: "postcopy/plain" and the like, one a line.
qemu_postcopy_qtests() {
  grep -o 'qtest_add_func("/migration/postcopy/[^"]*"' "$1/tests/qtest/migration-test.c" |
    sed -e 's|^qtest_add_func("/migration/||' -e 's|"$||'
}

# Compiles the shim as shipped (integrations/qemu-7.2/postcopy-ram.c, without the check's
# PCR_QEMU_CHECK) into the object file $1, with the patched build's own compiler command
# for migration/postcopy-ram.c (compile_commands.json); prints the object file of that
# build (the instrumented one).
qemu_compile_shipped_shim() {
  local bld=$CACHE/patched/build tree=$CACHE/patched/src out=$1 rc=0
  cp "$ROOT/integrations/qemu-7.2/postcopy-ram.c" "$tree/migration/pcr-shipped-postcopy-ram.c"
  (cd "$bld" && python3 - "$out" <<'PY'
import json, os, shlex, subprocess, sys
out = sys.argv[1]
for e in json.load(open("compile_commands.json")):
    if e["file"].endswith("/migration/postcopy-ram.c"):
        break
else:
    sys.exit("no migration/postcopy-ram.c in compile_commands.json")
argv, cmd, skip = shlex.split(e["command"]), [], False
obj = argv[argv.index("-o") + 1]
for a in argv:
    if skip:
        skip = False
    elif a in ("-MQ", "-MF", "-o"):
        skip = True
    elif a not in ("-MD", "-c", e["file"]):
        cmd.append(a)
src = e["file"].replace("/migration/postcopy-ram.c", "/migration/pcr-shipped-postcopy-ram.c")
subprocess.run(cmd + ["-o", out, "-c", src], check=True)
print(os.path.abspath(obj))
PY
  ) || rc=$?
  rm -f "$tree/migration/pcr-shipped-postcopy-ram.c"
  return "$rc"
}

# What a failed qtest's log says, without the QMP traffic: QEMU's own messages, the
# assertion, the migration states reached, and stacks if it hung.
qemu_qtest_failure_summary() {
  # (|| true: under set -e and pipefail, no match must not end the caller.)
  grep -h -a -E 'qemu-system-x86_64:|ERROR|Bail out|^not ok|HUNG|^===|^Thread|^#[0-9]' "$1" "$1.tap" 2>/dev/null |
    head -60 || true
  echo "last states seen: $(grep -a -o '"status": "[a-z-]*"' "$1" | uniq | tail -8 | sed 's/"status": //' | tr '\n' ' ')"
}
