"""Generated REAPI v2 / ByteStream code. Do not edit: run `python -m protocols.bazel_reapi.regen`."""
