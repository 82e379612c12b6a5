#!/bin/sh
# Make one proxy's ingest credentials (README.md, "Security and threat model"):
#
#     ingest-token.sh NODE_ID DIR [OWNER[:GROUP]]
#
# writes DIR/ingest-tokens ("NODE_ID TOKEN": every shard's --ingest-tokens) and
# DIR/ingest-token ("TOKEN": the proxy's --ingest-token-file), mode 0600 (a
# shard refuses a tokens file others may read), owned by OWNER when given.
# NODE_ID must be the proxy's node-id (deploy/ sets node-id = 1). The token is
# 32 random bytes in hex. Existing credentials are kept, never replaced, so it
# is safe to run on every start; to rotate, delete both files first.
# Plain POSIX sh + od: no nfsj, no Python needed.
set -eu

usage() {
    echo "usage: $0 NODE_ID DIR [OWNER[:GROUP]]" >&2
    exit 2
}
[ $# -ge 2 ] && [ $# -le 3 ] || usage
node=$1
dir=$2
owner=${3:-}
case $node in
    '' | *[!0-9]*) echo "$0: NODE_ID must be the proxy's node id (a number), not '$node'" >&2; exit 2 ;;
esac
if [ "${#node}" -gt 10 ] || [ "$node" -gt 4294967295 ]; then
    echo "$0: NODE_ID $node is not a 32-bit node id" >&2
    exit 2
fi

tokens=$dir/ingest-tokens
token=$dir/ingest-token
if [ -e "$tokens" ] && [ -e "$token" ]; then
    echo "$0: keeping the existing $tokens and $token"
    exit 0
fi
if [ -e "$tokens" ] || [ -e "$token" ]; then
    echo "$0: only one of $tokens and $token exists; remove it (or write the other by hand)" >&2
    exit 1
fi

umask 077
secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
if [ "${#secret}" -ne 64 ]; then
    echo "$0: could not read 32 random bytes from /dev/urandom" >&2
    exit 1
fi
trap 'rm -f "$tokens.new" "$token.new"' EXIT
printf '%s %s\n' "$node" "$secret" >"$tokens.new"
printf '%s\n' "$secret" >"$token.new"
chmod 0600 "$tokens.new" "$token.new"
if [ -n "$owner" ]; then
    chown "$owner" "$tokens.new" "$token.new"
fi
mv "$tokens.new" "$tokens"
mv "$token.new" "$token"
trap - EXIT
echo "$0: wrote $tokens (for the shards) and $token (for proxy node $node)"
