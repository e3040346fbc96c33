#!/usr/bin/env bash
# Starts RabbitMQ and PostgreSQL when they are not already running, then waits
# until both accept connections. Used by `make test`, `make run` and CI.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$2"; do
    if ((SECONDS > deadline)); then
      echo "ensure-services: $1 did not come up on 127.0.0.1:$2 within $3 s" >&2
      exit 1
    fi
    sleep 0.5
  done
}

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "ensure-services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  else
    echo "ensure-services: PostgreSQL is not running and pg_ctlcluster is missing" >&2
    exit 1
  fi
fi
wait_for PostgreSQL 5432 60

if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "ensure-services: starting RabbitMQ" >&2
    rabbitmq-server -detached
  else
    echo "ensure-services: RabbitMQ is not running and rabbitmq-server is missing" >&2
    exit 1
  fi
fi
wait_for RabbitMQ 5672 120
