# Source this file (`. .ci/env.sh`) to build ldsync as CI does: one target directory outside the clone, and, when
# ccache is installed, the C and C++ of cc-built crates (DuckDB's bundled sources above all) compiled once per machine
# and reused by every later build: check, test, bench and release, a fresh clone, a removed target directory, a
# dependency's features changed. Without ccache it only sets the target directory.
#
# libduckdb-sys unpacks DuckDB's sources once per target directory (`<target>/duckdb-sources/<content hash>/`) and
# only its objects go to the build script's hashed output directory, which ccache does not hash; so one set of
# objects serves every profile that compiles DuckDB with the same flags (see Cargo.toml's profile section).

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ldsync/target}"

if command -v ccache >/dev/null 2>&1; then
    export CC="ccache gcc"
    export CXX="ccache g++"
    export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ldsync/ccache}"
    # Absolute paths under the home directory (cargo's registry, the target directory) are hashed relative to the
    # compiler's working directory, and that directory is not hashed, so moving either keeps hits where it can.
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$HOME}"
    export CCACHE_NOHASHDIR=1
    # DuckDB's objects at -O3 take about 200 MiB compressed: room for several DuckDB versions.
    export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-4G}"
fi
