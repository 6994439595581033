# Sourced by scripts/quickstart and scripts/test: installs what building Cairn needs when it is
# missing (git2's HTTPS and SSH transports link the system OpenSSL through pkg-config; the
# backend's default `etcd` feature compiles etcd's protos with `protoc`).
build_deps_missing=()
command -v pkg-config >/dev/null 2>&1 || build_deps_missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || build_deps_missing+=(libssl-dev)
command -v git >/dev/null 2>&1 || build_deps_missing+=(git)
command -v protoc >/dev/null 2>&1 || build_deps_missing+=(protobuf-compiler)
if ((${#build_deps_missing[@]})); then
    echo "installing ${build_deps_missing[*]}" >&2
    build_deps_sudo=""
    [ "$(id -u)" = 0 ] || build_deps_sudo="sudo"
    $build_deps_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $build_deps_sudo apt-get install -y -qq "${build_deps_missing[@]}" >/dev/null
fi
