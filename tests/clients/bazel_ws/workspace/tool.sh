#!/bin/sh
echo "tool says $*"
