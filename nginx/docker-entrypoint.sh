#!/bin/sh
# Entry point of the edge image (Dockerfile target `edge`): renders nginx.conf from the
# environment into /run/nginx (a tmpfs: the root filesystem is read-only) and runs nginx in
# the foreground as the image's non-root user. Variables:
#   M2FP_UPSTREAMS          app instances, space-separated host:port (app:8000)
#   M2FP_LISTEN             addresses to listen on, space-separated (0.0.0.0; add [::] for IPv6)
#   M2FP_PUBLIC_HTTPS_PORT  the HTTPS port clients use, for the redirect (443)
#   M2FP_SERVER_NAME        the host name clients use, for the redirect (localhost)
#   M2FP_TLS_CERT, M2FP_TLS_KEY  certificate chain and key (mounted read-only)
#   M2FP_MAX_UPLOAD_MB      the app's upload cap (10): the body cap follows it
#   M2FP_REAL_IP_FROM       load balancers in front of nginx, space-separated CIDRs (none)
#   M2FP_HTTPS_PORT, M2FP_HTTP_PORT  ports inside the container (8443, 8080)
#   M2FP_EDGE_RUN_DIR, M2FP_STATIC_ROOT  (/run/nginx, /opt/m2fp/static)
set -eu
RUN_DIR="${M2FP_EDGE_RUN_DIR:-/run/nginx}"
HTTPS_PORT="${M2FP_HTTPS_PORT:-8443}"
HTTP_PORT="${M2FP_HTTP_PORT:-8080}"
set --
for upstream in ${M2FP_UPSTREAMS:-app:8000}; do set -- "$@" --upstream "$upstream"; done
for address in ${M2FP_LISTEN:-0.0.0.0}; do
  set -- "$@" --https-listen "$address:$HTTPS_PORT" --http-listen "$address:$HTTP_PORT"
done
for network in ${M2FP_REAL_IP_FROM:-}; do set -- "$@" --real-ip-from "$network"; done
cd "$(dirname "$0")/.."
python3 -m nginx.render --out "$RUN_DIR/nginx.conf" --runtime-dir "$RUN_DIR" \
  --cert "$M2FP_TLS_CERT" --key "$M2FP_TLS_KEY" \
  --public-https-port "${M2FP_PUBLIC_HTTPS_PORT:-443}" \
  --server-name "${M2FP_SERVER_NAME:-localhost}" \
  --static-root "${M2FP_STATIC_ROOT:-/opt/m2fp/static}" \
  --access-log /dev/stdout --error-log stderr "$@" >/dev/null
# No core dumps from the master either (its workers get worker_rlimit_core 0 from the config).
ulimit -c 0
# nginx's error log goes through nginx/log_filter.py (it drops the request context nginx
# appends: query strings, referrers) by a FIFO, so that nginx itself stays PID 1 and gets
# docker's signals.
rm -f "$RUN_DIR/error-log.fifo"
mkfifo -m 600 "$RUN_DIR/error-log.fifo"
python3 -m nginx.log_filter <"$RUN_DIR/error-log.fifo" &
exec /usr/sbin/nginx -e stderr -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" -g 'daemon off;' \
  2>"$RUN_DIR/error-log.fifo"
