# Sourced by scripts/test-postgres.sh and scripts/pg-cluster.sh: Debian's PostgreSQL server
# binaries ($bin, the newest installed) and how to run them ("${as[@]}": as the unprivileged
# postgres user when called as root, since PostgreSQL refuses to run as root).
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "PostgreSQL's server is not installed (apt-get install postgresql, or make deps)" >&2
  exit 1
fi
as=()
if [ "$(id -u)" -eq 0 ]; then
  as=(runuser -u postgres --)
fi
