# shellcheck shell=bash
# A local PostgreSQL for the tests: source it (`source .ci/postgres.sh`) from
# CI or by hand. It starts the local cluster when it is down (installing the
# server when it is missing), creates a role with a password and CREATEDB and
# a database for it (both only when missing, so it can run any number of
# times), and exports KILN_TEST_DATABASE_URL. Each test then creates a
# database of its own through that role and drops it at its end.
#
# A KILN_TEST_DATABASE_URL already set is left alone: the tests use that
# server instead. Written to be sourced: it never exits the caller's shell
# and leaves its shell options as they were.

kiln_pg_setup() {
  local version="${KILN_PG_VERSION:-15}"
  local cluster="${KILN_PG_CLUSTER:-main}"
  local port="${KILN_PG_PORT:-5432}"
  local role="kiln_test"
  local database="kiln_test"
  # A fixed password: the role can only create and drop its own databases,
  # and the server listens on localhost only.
  local password="kiln_test_password"

  if [ -n "${KILN_TEST_DATABASE_URL:-}" ]; then
    echo "postgres: using the KILN_TEST_DATABASE_URL already set"
    return 0
  fi

  # As the postgres superuser, over the local socket (peer authentication).
  kiln_pg_psql() {
    if [ "$(id -u)" = "0" ]; then
      runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"
    else
      sudo -n -u postgres psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"
    fi
  }

  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "postgres: not installed; installing it"
    if [ "$(id -u)" = "0" ]; then
      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql || return 1
    else
      sudo -n apt-get update -q && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql || return 1
    fi
    version="$(pg_lsclusters -h | awk 'NR == 1 { print $1 }')"
    cluster="$(pg_lsclusters -h | awk 'NR == 1 { print $2 }')"
  fi

  local status
  status="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { print $4 }')"
  if [ -z "$status" ]; then
    echo "postgres: no cluster $version/$cluster (pg_lsclusters lists: $(pg_lsclusters -h | awk '{ print $1 "/" $2 }' | xargs))" >&2
    return 1
  fi
  if [ "$status" != "online" ]; then
    echo "postgres: starting cluster $version/$cluster"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || return 1
  fi
  local i
  for i in $(seq 1 30); do
    if kiln_pg_psql -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
      break
    fi
    if [ "$i" = "30" ]; then
      echo "postgres: the server does not answer" >&2
      return 1
    fi
    sleep 1
  done

  # Idempotent: create the role when missing, (re)set its password either way.
  kiln_pg_psql -d postgres <<SQL || return 1
SELECT format('CREATE ROLE %I LOGIN CREATEDB', '$role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') \gexec
ALTER ROLE $role LOGIN CREATEDB PASSWORD '$password';
SELECT format('CREATE DATABASE %I OWNER %I', '$database', '$role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$database') \gexec
SQL

  export KILN_TEST_DATABASE_URL="postgres://$role:$password@127.0.0.1:$port/$database"
  echo "postgres: KILN_TEST_DATABASE_URL=postgres://$role:***@127.0.0.1:$port/$database"
}

kiln_pg_setup
