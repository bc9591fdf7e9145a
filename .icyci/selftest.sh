#!/bin/sh
# Test script for icyci testing its own repository:
#   icyci -test-script=.icyci/selftest.sh ...
# Runs in the checkout root. Builds and tests with the committed Cargo.lock.
# The tests need git, gpg, ssh-keygen and sshd on the builder.
# Writes a summary note (refs/notes/<ns>.summary) when $ICYCI_NOTES_DIR is set.
# Exit status: 0 when build and tests pass, non-zero otherwise.
set -eu

if ! command -v cargo >/dev/null 2>&1; then
	echo "selftest: cargo not found in PATH ($PATH)" >&2
	exit 127
fi

commit=$(git rev-parse --verify -q HEAD || echo unknown)
rustc_version=$(rustc --version 2>/dev/null || echo "rustc unknown")
cargo_version=$(cargo --version 2>/dev/null || echo "cargo unknown")
start=$(date +%s)

build=failed
tests=skipped
if cargo build --locked; then
	build=passed
	tests=failed
	if cargo test --locked; then
		tests=passed
	fi
fi

if [ "${ICYCI_NOTES_DIR:-}" != "" ]; then
	{
		echo "commit: $commit"
		echo "rustc: $rustc_version"
		echo "cargo: $cargo_version"
		echo "build: $build"
		echo "test: $tests"
		echo "duration: $(($(date +%s) - start))s"
	} >"$ICYCI_NOTES_DIR/summary"
fi

echo "selftest: build $build, test $tests"
[ "$build" = passed ] && [ "$tests" = passed ]
