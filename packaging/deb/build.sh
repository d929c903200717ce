#!/usr/bin/env bash
# Build the Debian package: packaging/deb/build.sh [OUTDIR]   (what `make deb` runs)
#
# The Python stack goes into a private venv under /usr/lib/nodewarden, built on Debian's /usr/bin/python3.11
# (the package depends on python3.11), from the project's wheel and what pip fetches from PyPI (or its cache).
# Environment: PIP (default .venv/bin/pip: runs the install for the target interpreter with --python),
# DEB_REVISION (default 1), WHEEL (a prebuilt wheel; default: build one into OUTDIR).
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in the package: postinst compiles on the node
cd "$(dirname "$0")/../.."
OUT=$(realpath -m "${1:-dist}")
PIP=${PIP:-.venv/bin/pip}
PY=${DEB_PYTHON:-/usr/bin/python3.11}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
DEBVER="$VERSION-${DEB_REVISION:-1}"
ARCH=$(dpkg --print-architecture)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
VENV=/usr/lib/nodewarden
mkdir -p "$OUT"

# 1. the wheel (the same one the container image installs)
if [ -z "${WHEEL:-}" ]; then
  rm -f "$OUT"/nodewarden-"$VERSION"-*.whl
  "$PIP" wheel -q --no-deps --disable-pip-version-check -w "$OUT" .
  WHEEL=$(ls "$OUT"/nodewarden-"$VERSION"-*.whl)
fi

# 2. the private venv, created where it will live (inside the staging root), then made relocatable to $VENV
"$PY" -m venv --without-pip "$ROOT$VENV"
"$PIP" --python "$ROOT$VENV/bin/python" install -q --no-compile --disable-pip-version-check "$WHEEL"
find "$ROOT$VENV/bin" -mindepth 1 ! -name nodewarden ! -name 'python*' -delete   # activate scripts, tools
sed -i "1s|^#!$ROOT$VENV/bin/python.*|#!$VENV/bin/python3|" "$ROOT$VENV/bin/nodewarden"
sed -i "s|$ROOT||g" "$ROOT$VENV/pyvenv.cfg"
find "$ROOT$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$ROOT$VENV" -name direct_url.json -delete
find "$ROOT$VENV" \( -name '*.so' -o -name '*.so.*' \) -exec strip --strip-unneeded {} + 2>/dev/null || true
find "$ROOT$VENV" -type f -exec chmod go-w {} +
find "$ROOT$VENV/lib" -type f ! -name '*.so' ! -name '*.so.*' -perm /111 -exec chmod a-x {} +  # modules, not tools
grep -rlZ --include='*.py' '^#!.*python' "$ROOT$VENV/lib" | xargs -0r sed -i '1s|^#!.*python.*$|# (module of the private venv)|'

# 3. the command, the unit, conffiles, state dir, docs
install -d "$ROOT/usr/bin" "$ROOT/lib/systemd/system" "$ROOT/etc/nodewarden/rules" "$ROOT/etc/default" \
  "$ROOT/usr/share/doc/nodewarden" "$ROOT/usr/share/man/man1" "$ROOT/usr/share/lintian/overrides"
install -d -m 0750 "$ROOT/var/lib/nodewarden"
ln -s ../lib/nodewarden/bin/nodewarden "$ROOT/usr/bin/nodewarden"
sed -e "s|^ExecStart=.*|EnvironmentFile=-/etc/default/nodewarden\nExecStart=/usr/bin/nodewarden run --config /etc/nodewarden/config.yml \$ARGS|" \
    -e "s|^Documentation=.*|Documentation=man:nodewarden(1) file:///usr/share/doc/nodewarden/README.md.gz|" \
    -e "s|^# Install: see README.*|# Installed by the nodewarden Debian package; local changes: systemctl edit nodewarden|" \
    systemd/nodewarden.service > "$ROOT/lib/systemd/system/nodewarden.service"
chmod 0644 "$ROOT/lib/systemd/system/nodewarden.service"
install -m 0644 systemd/config.yml "$ROOT/etc/nodewarden/config.yml"
for f in rules/*.yml; do   # the default rule library (the policy is not a rule file: it goes beside the rules)
  [ "$f" = rules/remediations.yml ] || install -m 0644 "$f" "$ROOT/etc/nodewarden/rules/"
done
install -m 0644 rules/remediations.yml "$ROOT/etc/nodewarden/remediations.yml"
install -m 0644 packaging/deb/default "$ROOT/etc/default/nodewarden"
install -m 0644 packaging/deb/copyright "$ROOT/usr/share/doc/nodewarden/copyright"
sed "s/@VERSION@/$DEBVER/" packaging/deb/changelog | gzip -9n > "$ROOT/usr/share/doc/nodewarden/changelog.Debian.gz"
gzip -9nc README.md > "$ROOT/usr/share/doc/nodewarden/README.md.gz"
"$ROOT$VENV/bin/python" packaging/deb/manpage.py "$DEBVER" | gzip -9n > "$ROOT/usr/share/man/man1/nodewarden.1.gz"
install -m 0644 packaging/deb/lintian-overrides "$ROOT/usr/share/lintian/overrides/nodewarden"

ln -sf ../../../bin/python3.11 "$ROOT$VENV/bin/python3.11"   # relative: resolves inside whatever root it lands in

# 4. control files
install -d "$ROOT/DEBIAN"
(cd "$ROOT" && find etc -type f | sed 's|^|/|' | sort) > "$ROOT/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$ROOT/DEBIAN/"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$DEBVER/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" packaging/deb/control.in > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$ROOT/DEBIAN/md5sums"

DEB="$OUT/nodewarden_${DEBVER}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
