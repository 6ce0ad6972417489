#!/bin/sh
set -e
out="$("$TEST_SRCDIR/mic_bazel_fixture/tool" ok)"
[ "$out" = "tool says ok" ]
