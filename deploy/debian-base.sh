#!/bin/sh
# A Debian bookworm base image with Python 3.11 and its venv module, made with
# debootstrap and `podman import`, for machines that reach the Debian mirror
# but no container registry. Build the image FROM it:
#
#   deploy/debian-base.sh localhost/wadud-base:bookworm
#   podman build --format docker -f deploy/Dockerfile \
#       --build-arg BASE_IMAGE=localhost/wadud-base:bookworm -t wadud .
#
# Needs root, debootstrap and podman. MIRROR overrides the Debian mirror.
set -eu
tag=${1:-localhost/wadud-base:bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d "${TMPDIR:-/tmp}/wadud-base.XXXXXX")
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
# What a container never reads: docs, manuals, translations, apt's caches.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/var/log/*.log "$root"/tmp/*
tar -C "$root" --numeric-owner -c . \
    | podman import --quiet --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase bookworm + python3-venv" - "$tag" >/dev/null
echo "$tag"
