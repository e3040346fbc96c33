#!/usr/bin/env bash
# Makes sure the services the project needs are installed, running and
# accepting connections. Used by `make run` (RabbitMQ only: the default store
# is SQLite), `make test` and CI (both).
#
#   scripts/ensure-services.sh [rabbitmq] [postgres] [stunnel] [tools]
#                        (no argument: rabbitmq, postgres and stunnel)
#
# `tools` installs the checkers the deployment tests run: promtool (package
# prometheus) for deploy/prometheus and systemd-analyze (package systemd) for
# deploy/systemd. .ci/run asks for them; under CI those tests fail without them.
#
# A missing service is installed with apt-get when this machine has it and we
# are root (or `sudo -n` works); otherwise the script stops and prints the
# commands to run for Debian/Ubuntu, Fedora and macOS. For PostgreSQL it also
# creates the role the tests log in as (zhima_test, password zhima_test,
# CREATEDB), unless that login already works. stunnel is no service: the TLS
# tests (tests/it/tls.rs) start it themselves, in front of RabbitMQ.
set -euo pipefail

TEST_ROLE=zhima_test
TEST_PASSWORD=zhima_test

say() { echo "ensure-services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$2"; do
    if ((SECONDS > deadline)); then
      say "$1 did not come up on 127.0.0.1:$2 within $3 s"
      exit 1
    fi
    sleep 0.5
  done
}

# Runs a command as root: directly when we are root, through `sudo -n`
# (never prompting) otherwise. Fails when neither is possible.
as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

can_be_root() { ((EUID == 0)) || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; }

manual_steps() { # what is missing
  echo "ensure-services: $1 is not installed, and it cannot be installed from here" >&2
  echo "(this needs apt-get and root, or sudo without a password)." >&2
  install_help
  exit 1
}

install_help() {
  cat >&2 <<EOF
Install and start RabbitMQ and PostgreSQL:

  Debian / Ubuntu:
    sudo apt-get update && sudo apt-get install -y rabbitmq-server postgresql
    sudo systemctl start rabbitmq-server postgresql
  Fedora:
    sudo dnf install -y rabbitmq-server postgresql-server postgresql
    sudo postgresql-setup --initdb && sudo systemctl start rabbitmq-server postgresql
  macOS (Homebrew):
    brew install rabbitmq postgresql@16
    brew services start rabbitmq && brew services start postgresql@16

then, for \`make test\`, create the role the tests log in as:
    sudo -u postgres psql -c "CREATE ROLE $TEST_ROLE LOGIN PASSWORD '$TEST_PASSWORD' CREATEDB"
    (macOS: psql postgres -c "...")
and run this command again.
EOF
}

apt_updated=
apt_install() { # package...
  command -v apt-get >/dev/null 2>&1 && can_be_root || return 1
  if [[ -z $apt_updated ]]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  say "installing $*"
  # A package's own start script may fail where there is no init system;
  # starting is done below either way.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server || manual_steps RabbitMQ
  fi
  if ! port_open 5672; then
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached || rabbitmq-server -detached
  fi
  wait_for RabbitMQ 5672 120
}

# The newest PostgreSQL cluster of a Debian-style install, created when the
# package left none (as it does when installed without an init system).
debian_cluster() {
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  if [[ -z $version ]]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    say "creating PostgreSQL cluster $version/main"
    as_root pg_createcluster "$version" main >&2
  fi
  echo "$version"
}

ensure_postgres() {
  if ! port_open 5432; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! command -v pg_ctl >/dev/null 2>&1; then
      apt_install postgresql || manual_steps PostgreSQL
    fi
    if ! port_open 5432; then
      command -v pg_ctlcluster >/dev/null 2>&1 || manual_steps "A startable PostgreSQL (pg_ctlcluster)"
      local version
      version=$(debian_cluster)
      say "starting PostgreSQL $version"
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
  fi
  wait_for PostgreSQL 5432 60
  ensure_test_role
}

# As the database's superuser (the postgres OS user over the local socket).
psql_as_postgres() {
  if ((EUID == 0)) && command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qAt "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n -u postgres true 2>/dev/null; then
    sudo -n -u postgres psql -v ON_ERROR_STOP=1 -qAt "$@"
  else
    psql -v ON_ERROR_STOP=1 -qAt -d postgres "$@"
  fi
}

ensure_test_role() {
  local url="postgres://$TEST_ROLE:$TEST_PASSWORD@127.0.0.1:5432/postgres"
  if ! command -v psql >/dev/null 2>&1; then
    say "psql is missing: cannot check the test role $TEST_ROLE (tests log in as $url)"
    return 0
  fi
  psql "$url" -qAtc 'select 1' >/dev/null 2>&1 && return 0
  say "creating the test role $TEST_ROLE"
  psql_as_postgres <<SQL >/dev/null || { say "could not create role $TEST_ROLE; see: $0 --help"; exit 1; }
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$TEST_ROLE') THEN
    CREATE ROLE $TEST_ROLE LOGIN CREATEDB PASSWORD '$TEST_PASSWORD';
  ELSE
    ALTER ROLE $TEST_ROLE LOGIN CREATEDB PASSWORD '$TEST_PASSWORD';
  END IF;
END \$\$;
SQL
  psql "$url" -qAtc 'select 1' >/dev/null || { say "role $TEST_ROLE exists but cannot log in over 127.0.0.1 (check pg_hba.conf)"; exit 1; }
}

ensure_tools() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  ((${#missing[@]} == 0)) && return 0
  # --no-install-recommends: promtool only, not Prometheus' web assets.
  apt_install --no-install-recommends "${missing[@]}" || {
    say "cannot install ${missing[*]} here; install promtool (Prometheus) and systemd-analyze (systemd)"
    exit 1
  }
  command -v promtool >/dev/null 2>&1 && command -v systemd-analyze >/dev/null 2>&1 || {
    say "${missing[*]} installed, but promtool or systemd-analyze is still missing"
    exit 1
  }
}

# The TLS tests put stunnel in front of RabbitMQ for amqps:// (they start
# their own PostgreSQL cluster with initdb, which the postgresql package has).
ensure_stunnel() {
  if command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1; then
    return 0
  fi
  apt_install stunnel4 && return 0
  cat >&2 <<EOF
ensure-services: stunnel is not installed, and it cannot be installed from here.
The TLS tests need it. Debian / Ubuntu: sudo apt-get install -y stunnel4
  Fedora: sudo dnf install -y stunnel    macOS (Homebrew): brew install stunnel
EOF
  exit 1
}

wanted=("$@")
if ((${#wanted[@]} == 0)); then wanted=(rabbitmq postgres stunnel); fi
for service in "${wanted[@]}"; do
  case $service in
    rabbitmq) ensure_rabbitmq ;;
    postgres) ensure_postgres ;;
    stunnel) ensure_stunnel ;;
    tools) ensure_tools ;;
    -h | --help) sed -n '2,18p' "$0"; install_help; exit 0 ;;
    *) say "unknown service '$service' (rabbitmq, postgres, stunnel, tools)"; exit 64 ;;
  esac
done
