#!/bin/sh
# Start rpcbind (ganesha refuses to start without one to register with), then
# ganesha in the foreground, logging to stdout.
set -eu
mkdir -p /run/rpcbind /var/lib/nfs/ganesha
rpcbind
i=0
until rpcinfo -p 127.0.0.1 >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 50 ]; then
        echo "ganesha-entrypoint: rpcbind did not come up" >&2
        exit 1
    fi
    sleep 0.1
done
exec ganesha.nfsd -F -f /etc/ganesha/ganesha.conf -L /dev/stdout -p /run/ganesha.pid "$@"
