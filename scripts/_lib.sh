# shellcheck shell=bash
# Shared helpers for the upstream-form scripts (vendor, regen-patches,
# check-patches, pr-branch, upstream-test). Sourced, not executed.
#
# Environment overrides (all optional):
#   PATCHES_DIR  patch series + BASE file        (default: <repo>/patches)
#   VENDOR_ROOT  where vendored trees are built  (default: <repo>/vendor)
#   SDIST_CACHE  verified sdist downloads        (default: $VENDOR_ROOT/.cache)
#   PYTHON       python whose pip downloads sdists (default: python3)

set -euo pipefail
export LC_ALL=C

SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$SCRIPTS_DIR")
PATCHES_DIR=${PATCHES_DIR:-$ROOT/patches}
VENDOR_ROOT=${VENDOR_ROOT:-$ROOT/vendor}
SDIST_CACHE=${SDIST_CACHE:-$VENDOR_ROOT/.cache}
PYTHON=${PYTHON:-python3}
PROG=$(basename "$0")
# Make the overridable paths absolute (scripts run git -C elsewhere).
for _v in PATCHES_DIR VENDOR_ROOT SDIST_CACHE; do
    [[ ${!_v} == /* ]] || printf -v "$_v" '%s/%s' "$PWD" "${!_v}"
done
unset _v

# Identity used for commits the scripts make in trees they own.
SCRIPT_GIT_NAME="livekit-segments scripts"
SCRIPT_GIT_EMAIL="scripts@livekit-segments.invalid"
# Fixed date for the pristine base commit, so its hash is reproducible.
BASE_COMMIT_DATE="2000-01-01T00:00:00+0000"

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
say() { printf '%s: %s\n' "$PROG" "$*"; }

# git isolated from the user's global/system config (hooks, format.*, am.*,
# diff.*, lfs filters, ...) for trees the scripts own, and for output that must
# be reproducible.
igit() {
    GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
        git -c user.name="$SCRIPT_GIT_NAME" -c user.email="$SCRIPT_GIT_EMAIL" \
        -c advice.detachedHead=false -c init.defaultBranch=main "$@"
}

abspath() { (cd "$1" && pwd); }

# run_pip CMD...: run a pip command, dropping pip's "Location ... is ignored"
# noise (from find-links/extra-index-url entries that do not exist locally).
run_pip() {
    local rc
    set +e
    "$@" 2>&1 | grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$"
    rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
    fi
}

# read_base: sets BASE_VERSION and BASE_SHA256 from $PATCHES_DIR/BASE
# (lines KEY=VALUE; '#' comments; shell-sourceable but parsed, not sourced).
read_base() {
    local f="$PATCHES_DIR/BASE"
    [[ -f $f ]] || die "$f not found. It must contain the pinned base, e.g.:
    VERSION=1.8.9
    SHA256=<sha256 of livekit_agents-1.8.9.tar.gz from PyPI>"
    BASE_VERSION=$(sed -n 's/^[[:space:]]*VERSION[[:space:]]*=[[:space:]]*//p' "$f" | tr -d "\"' \r" | tail -n1)
    BASE_SHA256=$(sed -n 's/^[[:space:]]*SHA256[[:space:]]*=[[:space:]]*//p' "$f" | tr -d "\"' \r" | tail -n1 | tr 'A-F' 'a-f')
    [[ $BASE_VERSION =~ ^[0-9]+(\.[0-9]+)*[A-Za-z0-9.+-]*$ ]] ||
        die "$f: missing or malformed VERSION= line (got '${BASE_VERSION}')"
    [[ $BASE_SHA256 =~ ^[0-9a-f]{64}$ ]] ||
        die "$f: missing or malformed SHA256= line (want 64 hex digits, got '${BASE_SHA256}')"
}

# list_series: sets SERIES=(sorted NNNN-*.patch files); dies on anything
# that looks like a patch but would be silently ignored, or on a gap in numbering.
list_series() {
    SERIES=()
    local f name n=0 expect
    shopt -s nullglob
    for f in "$PATCHES_DIR"/*.patch; do
        name=$(basename "$f")
        [[ $name =~ ^[0-9]{4}-.+\.patch$ ]] ||
            die "$f is not named NNNN-*.patch, so it would not be part of the series. Rename or remove it (scripts/regen-patches writes correct names)."
        n=$((n + 1))
        printf -v expect '%04d' "$n"
        [[ ${name:0:4} == "$expect" ]] ||
            die "series numbering is broken at $name (expected $expect-*.patch). Regenerate with scripts/regen-patches."
        SERIES+=("$f")
    done
    shopt -u nullglob
}

# fetch_sdist VERSION SHA256|'' -> sets SDIST (path of the verified tarball)
# and SDIST_SHA256. Downloads with pip (PyPI, or PIP_INDEX_URL) into the cache.
# shellcheck disable=SC2034  # SDIST, SDIST_SHA256 are used by the callers
fetch_sdist() {
    local version=$1 want=$2 dir f got dl
    local -a found
    dir="$SDIST_CACHE/$version"
    mkdir -p "$dir"
    shopt -s nullglob
    found=("$dir"/livekit[-_]agents-"$version".tar.gz)
    shopt -u nullglob
    if ((${#found[@]})); then
        f=${found[0]}
        got=$(sha256_of "$f")
        if [[ -z $want || $got == "$want" ]]; then
            SDIST=$f SDIST_SHA256=$got
            return 0
        fi
        warn "cached $f has sha256 $got, expected $want; downloading again"
        rm -f "$f"
    fi
    "$PYTHON" -m pip --version >/dev/null 2>&1 ||
        die "'$PYTHON -m pip' is not available; install pip or set PYTHON=/path/to/python-with-pip"
    dl=$(mktemp -d "$SDIST_CACHE/.download.XXXXXX")
    say "downloading livekit-agents $version sdist with pip"
    if ! "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps \
        --no-binary :all: "livekit-agents==$version" -d "$dl" >"$dl.log" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$dl.log" | tail -n 15 | cut -c1-300 >&2 || true
        rm -rf "$dl" "$dl.log"
        rmdir "$dir" 2>/dev/null || true
        die "pip could not download the livekit-agents $version sdist (see above). It needs access to PyPI (or a mirror via PIP_INDEX_URL); check that the version exists: https://pypi.org/project/livekit-agents/$version/"
    fi
    rm -f "$dl.log"
    shopt -s nullglob
    found=("$dl"/*.tar.gz)
    shopt -u nullglob
    ((${#found[@]} == 1)) || { rm -rf "$dl"; die "pip download produced no single .tar.gz sdist for livekit-agents $version"; }
    f="$dir/$(basename "${found[0]}")"
    mv "${found[0]}" "$f"
    rm -rf "$dl"
    got=$(sha256_of "$f")
    if [[ -n $want && $got != "$want" ]]; then
        rm -f "$f"
        die "sha256 mismatch for $(basename "$f"): expected $want (pinned), got $got.
The file on the index is not the one the series was pinned to. Do not proceed until
you know why (compare with https://pypi.org/project/livekit-agents/$version/#files)."
    fi
    SDIST=$f SDIST_SHA256=$got
}

# extract_sdist TARBALL VERSION DEST: unpack the sdist's top directory into DEST
# (DEST/livekit/agents/..., DEST/pyproject.toml, ...).
extract_sdist() {
    local tarball=$1 version=$2 dest=$3 tops
    tops=$(tar -tzf "$tarball" | cut -d/ -f1 | sort -u)
    [[ $tops =~ ^livekit[-_]agents-${version//./\\.}$ ]] ||
        die "unexpected top-level entries in $tarball: $(echo "$tops" | tr '\n' ' ')"
    mkdir -p "$dest"
    tar -xzf "$tarball" -C "$dest" --strip-components=1 --no-same-owner
    [[ -f $dest/livekit/agents/version.py && -f $dest/pyproject.toml ]] ||
        die "$tarball does not look like a livekit-agents sdist (no livekit/agents/version.py or pyproject.toml)"
    grep -q "__version__ = \"$version\"" "$dest/livekit/agents/version.py" ||
        warn "livekit/agents/version.py in the sdist does not say $version"
}

# build_pristine VERSION TARBALL SHA DEST: create git repo DEST with the sdist
# under DEST/livekit-agents/ (upstream layout), one commit, tagged 'base'.
build_pristine() {
    local version=$1 tarball=$2 sha=$3 dest=$4
    extract_sdist "$tarball" "$version" "$dest/livekit-agents"
    igit init -q "$dest"
    # The sdist ships resources/.gitattributes marking *.ogg as git-lfs; keep the
    # real files in this repo even if the user has git-lfs configured.
    printf '* !filter !diff !merge\n' >"$dest/.git/info/attributes"
    printf '%s\n' '__pycache__/' '*.py[cod]' '.pytest_cache/' '*.egg-info/' >>"$dest/.git/info/exclude"
    igit -C "$dest" add -A -f .
    GIT_AUTHOR_NAME="livekit-agents sdist" GIT_AUTHOR_EMAIL="sdist@livekit-segments.invalid" \
        GIT_COMMITTER_NAME="livekit-agents sdist" GIT_COMMITTER_EMAIL="sdist@livekit-segments.invalid" \
        GIT_AUTHOR_DATE=$BASE_COMMIT_DATE GIT_COMMITTER_DATE=$BASE_COMMIT_DATE \
        GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
        git -C "$dest" commit -q --no-verify \
        -m "livekit-agents $version (pristine sdist)" \
        -m "$(basename "$tarball") from PyPI, sha256 $sha, unpacked under livekit-agents/ (upstream repo layout)."
    igit -C "$dest" tag base
}

# preimage_paths PATCH: paths the patch expects to exist (modified, deleted,
# renamed or copied from); new files are not listed.
preimage_paths() {
    awk '/^diff --git /{d=1}
         d && /^--- a\//{p=substr($0,7); sub(/\t$/,"",p); print p}
         d && /^(rename|copy) from /{sub(/^(rename|copy) from /,""); print}' "$1" | sort -u
}

# apply_series TREE DESCRIPTION PATCH...: git am each patch onto TREE (exact
# apply, no 3-way). On failure: abort the am, explain, return 1.
apply_series() {
    local tree=$1 what=$2 p path out
    local -a missing
    shift 2
    for p in "$@"; do
        missing=()
        while IFS= read -r path; do
            [[ -n $path ]] || continue
            igit -C "$tree" cat-file -e "HEAD:$path" 2>/dev/null || missing+=("$path")
        done < <(preimage_paths "$p")
        if ((${#missing[@]})); then
            printf '%s: error: %s changes path(s) that do not exist in %s:\n' "$PROG" "$(basename "$p")" "$what" >&2
            printf '    %s\n' "${missing[@]}" >&2
            printf '%s\n' "The base tree only has the sdist (livekit-agents/livekit/agents/..., livekit-agents/pyproject.toml," \
                "livekit-agents/README.md) plus what earlier patches add. Upstream's existing tests/ and examples/" \
                "files are not in the sdist, so the series may only ADD files there." >&2
            return 1
        fi
        if ! out=$(igit -C "$tree" am --no-3way --committer-date-is-author-date --no-scissors \
            --no-message-id --no-keep-cr --whitespace=warn "$p" 2>&1); then
            igit -C "$tree" am --abort >/dev/null 2>&1 || true
            printf '%s: error: %s does not apply to %s:\n' "$PROG" "$(basename "$p")" "$what" >&2
            printf '%s\n' "$out" | grep -v -e '^Applying: ' -e '^hint: ' -e '^When you have resolved' \
                -e '^If you prefer to skip' -e '^To restore the original' -e '^See "git help am"' | sed 's/^/    /' >&2
            return 1
        fi
        printf '%s\n' "$out" | grep -v '^Applying: ' | sed 's/^/    /' >&2 || true
    done
}

# format_series TREE OUTDIR: canonical `git format-patch` of base..HEAD.
# Options are explicit and config is isolated so output is reproducible.
format_series() {
    local tree=$1 out=$2 merges
    merges=$(igit -C "$tree" rev-list --merges base..HEAD)
    [[ -z $merges ]] || die "$tree has merge commits in base..HEAD; git format-patch would drop them. Linearize with: git -C $tree rebase base"
    mkdir -p "$out"
    igit -C "$tree" format-patch -q -o "$out" \
        --zero-commit --no-signature --full-index --no-numbered --no-renames \
        --no-relative --src-prefix=a/ --dst-prefix=b/ --diff-algorithm=myers \
        --no-thread --no-cover-letter --no-signoff --no-base --no-notes \
        --suffix=.patch --start-number=1 --filename-max-length=64 \
        base..HEAD
}

# compare_series DIR_A DIR_B: 0 if both hold identical NNNN-*.patch files;
# otherwise print a short report to stderr and return 1.
compare_series() {
    local a=$1 b=$2 rc=0 names
    names=$( (cd "$a" && ls) ; (cd "$b" && ls) ) || true
    names=$(printf '%s\n' "$names" | grep -E '^[0-9]{4}-.*\.patch$' | sort -u || true)
    local n
    for n in $names; do
        if [[ ! -f $a/$n ]]; then
            echo "    only in $b: $n" >&2; rc=1
        elif [[ ! -f $b/$n ]]; then
            echo "    only in $a: $n" >&2; rc=1
        elif ! cmp -s "$a/$n" "$b/$n"; then
            echo "    differs: $n" >&2
            diff -u "$a/$n" "$b/$n" | head -n 30 | sed 's/^/      /' >&2
            rc=1
        fi
    done
    return $rc
}

# read_branches: sets BRANCH_NAMES, BRANCH_LAST (patch count) and BRANCH_TESTS (space-separated)
# from $PATCHES_DIR/branches (see that file); needs SERIES (list_series) to check the counts.
read_branches() {
    local f="$PATCHES_DIR/branches" name last tests n=0
    BRANCH_NAMES=() BRANCH_LAST=() BRANCH_TESTS=()
    [[ -f $f ]] || die "$f not found: it lists the pull-request branches (NAME LAST TEST...)"
    while read -r name last tests; do
        n=$((n + 1))
        [[ -z $name || $name == \#* ]] && continue
        git check-ref-format --branch "$name" >/dev/null 2>&1 || die "$f:$n: '$name' is not a valid branch name"
        [[ $last =~ ^[0-9]{4}$ ]] || die "$f:$n: LAST must be a 4-digit patch number, got '$last'"
        ((10#$last >= 1 && 10#$last <= ${#SERIES[@]})) ||
            die "$f:$n: LAST $last is outside the series (0001..$(printf '%04d' ${#SERIES[@]}))"
        [[ -n $tests ]] || die "$f:$n: branch $name names no test module"
        BRANCH_NAMES+=("$name") BRANCH_LAST+=("$((10#$last))") BRANCH_TESTS+=("$tests")
    done <"$f"
    ((${#BRANCH_NAMES[@]})) || die "$f lists no branch"
}
